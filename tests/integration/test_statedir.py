"""PATH_BASE is the fetcher's own: no other local user of the GPU box reaches a job's directory.

Job containers run as root (no user namespace) and the job directory is bind-mounted at /files,
so a job can leave a setuid-root program (or file capabilities) in it: docker's
`no-new-privileges` only holds inside the container, and bind mounts cannot be nosuid. The job
directory is 0777 (the job's user may be anyone), so PATH_BASE must not let others walk to
PATH_BASE/<id>/... to run that program as root or write into another job's files while it runs,
whatever mode PATH_BASE was created with (0755 by `mkdir` or by docker for
`-v /srv/decode-fetcher:/data`). The container does not need PATH_BASE to be searchable (the mount
starts at the job directory), so the fetcher keeps it to itself.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from tests.helpers import Env, daemon_in_thread, fetcher_id, wait_for

pytestmark = pytest.mark.docker


def test_a_setuid_root_file_a_job_leaves_is_out_of_other_users_reach(env: Env, engine: Any) -> None:
    """A setuid-root program a job leaves in its directory is out of every other local user's reach:
    PATH_BASE, whatever mode it was made with (0755 here, as `mkdir` or docker make it), grants
    group and others nothing once the fetcher runs."""
    # Given PATH_BASE as mkdir or docker makes it
    env.base.chmod(0o755)
    job = env.submit(
        [
            "cp /bin/busybox /files/output/rootsh",
            "&&",
            "chmod 4755 /files/output/rootsh",
            "&&",
            "sleep 3",
        ]
    )
    daemon = build_daemon(
        env.settings(fetcher_id=fetcher_id("suid")), exit_when_idle=True, docker_client=engine
    )

    # When the job has made its file (what it can do today: a setuid-root program on the host)
    def setuid_file() -> Any:  # found once chmod ran (not while cp still writes it)
        found = next(env.base.glob("*/output/rootsh"), None)
        return found if found and os.lstat(found).st_mode & stat.S_ISUID else None

    with daemon_in_thread(daemon, timeout_s=60) as run:
        found = wait_for(setuid_file, 60, "the job's setuid file")
        st = os.lstat(found)
        assert st.st_uid == 0 and st.st_mode & stat.S_ISUID, "premise: the job made it setuid root"
        # Then no other local user can reach it: PATH_BASE grants group and others nothing
        assert env.base.stat().st_mode & 0o077 == 0, oct(env.base.stat().st_mode)
    assert run.rc == 0 and job.status.value == "finished"
