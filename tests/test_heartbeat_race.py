"""A lease renewal racing the completer's write of the same job's outcome."""

from __future__ import annotations

import logging

from .conftest import count
from .test_services import Rig


def test_a_job_whose_outcome_is_being_written_is_not_a_lost_lease(app, conn, db, schema,
                                                                  pg_url, caplog):
    @app.task(name="quick")
    def quick() -> None: ...

    quick.enqueue(conn)
    conn.commit()
    rig = Rig(app, pg_url, db, lease_timeout=10)
    try:
        (job,) = rig.claim()
        # The completer marks its batch, its success commits, and the heartbeat renews
        # before the completer has taken the job out of in_hand (seen in a full run as
        # "lost the lease of job(s) [...] (expired and rescued elsewhere?)").
        rig.in_hand.settling([job.id])
        rig.store.complete(db, succeeded=[job], retried=[], dead=[], durations=[],
                           now=rig.clock.sql_now())
        assert count(db, schema, "jobs") == 0
        with caplog.at_level(logging.WARNING, logger="pgjobs"):
            rig.heartbeat.renew_leases()
        assert rig.stats.lost_leases == 0 and "lost the lease" not in caplog.text
        rig.in_hand.remove([job.id])  # what the completer does right after its write
        assert len(rig.in_hand) == 0 and not rig.in_hand.is_settling(job.id)
    finally:
        rig.close()
