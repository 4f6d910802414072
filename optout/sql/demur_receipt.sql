-- The receipt number of an event, as optout.ledger.format_receipt: the id and a 24-bit
-- code as 12 Crockford base32 characters, grouped by four. One inlinable expression.

CREATE OR REPLACE FUNCTION demur_receipt(id bigint, code integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 55) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 50) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 45) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 40) & 31)::integer + 1, 1)
        || '-'
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 35) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 30) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 25) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 20) & 31)::integer + 1, 1)
        || '-'
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 15) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 10) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 5) & 31)::integer + 1, 1)
        || substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (((id << 24 | code) >> 0) & 31)::integer + 1, 1)
$$;
