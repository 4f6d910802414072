-- wrk script of bench/optout_pages.py: POSTs with the CSRF cookie and token of one page
-- view. BENCH_KIND=objection sends each request to its own signed link, read from the
-- file BENCH_PATHS (thread i of BENCH_THREADS takes lines i, i+n, i+2n ...);
-- BENCH_KIND=baseline posts the same body to the insert-one-row view.

local kind = os.getenv("BENCH_KIND")
local threads = tonumber(os.getenv("BENCH_THREADS"))
local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = "csrftoken=" .. os.getenv("BENCH_CSRF_COOKIE"),
    ["Origin"] = os.getenv("BENCH_ORIGIN"),
}
local body = "csrfmiddlewaretoken=" .. os.getenv("BENCH_CSRF_TOKEN") .. "&object=yes&reason="
local paths = {}
local sent = 0
local counter = 0

function setup(thread)
    thread:set("thread_no", counter)
    counter = counter + 1
end

function init(args)
    if kind == "objection" then
        local n = 0
        for line in io.lines(os.getenv("BENCH_PATHS")) do
            if n % threads == thread_no then
                paths[#paths + 1] = line
            end
            n = n + 1
        end
    end
end

function request()
    sent = sent + 1
    local path = "/bench/insert-one-row/"
    if kind == "objection" then
        path = paths[sent]
        if path == nil then
            error("bench/optout_wrk.lua: out of signed links; sign more")
        end
    end
    return wrk.format("POST", path, headers, body)
end
