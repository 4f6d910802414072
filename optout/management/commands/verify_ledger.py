from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from optout.selectors import ledger_verify


class Command(BaseCommand):
    help = "Recompute the objection ledger's hash chains and name the first bad event."

    def handle(self, *args, **options):
        report = ledger_verify()
        first = report.first_problem
        if first is None:
            self.stdout.write(f"Ledger intact: {report.events} events in {report.chains} chains.")
            return
        for problem in report.problems:
            where = f"event #{problem.event_id}" if problem.event_id else "state"
            self.stderr.write(
                f"{where} receipt {problem.receipt or '-'} subject {problem.subject_id}: {problem.reason}"
            )
        label = (
            f"event #{first.event_id} (receipt {first.receipt})"
            if first.event_id
            else f"the state of subject {first.subject_id}"
        )
        raise CommandError(f"Ledger broken: {len(report.problems)} problem(s); the first is {label}: {first.reason}.")
