"""DECODE OpenCloud job fetcher.

How a job flows, and where each part lives:

    cli ──► daemon (wiring) ──► worker (the loop: poll, claim, dispatch, drain; no HTTP, no Docker)
                                  │  offer ◄── pool (shares; staged jobs) ◄── host (CPU, memory)
                                  │                  ◄── gpu.board (free, healthy) ◄── gpu.nvml
                                  │  claim ──► source ──► api.client (GET /jobs)
                                  ▼
                   job.pipeline: process_job, one thread per job
      claim ─► stage ───────────────────► run ────────────────► deliver ──────► clean
               job.workspace (dir)         engine.container      outcome          job.cleanup
               job.transfer ◄─ api.files   engine.output (log)    (whose fault?)   engine.purge
               engine.pull (image)         job.keepalive          delivery
                                           (status pings,         (exactly once,
                                            cancel on 404)         store + ownership)

    At start, recovery settles what an earlier life left (store, containers, directories).

Where is ...
- the container started, waited for, removed: `engine.container`
- a status sent: `job.keepalive` (while the job runs), `delivery` (the final one, exactly once)
- hand-back decided: `outcome` (reads each failure's `fault` from `errors`; the engine's and
  registries' messages are read in `engine.errors`)
- "the server took the job from us": `ownership`
- what a job is doing, and how it ended: `lifecycle` (Phase, Stage, OutcomeKind)
- the state directory's files: `statedir`; what `fetcher status` shows: `snapshot`, `status`
- which GPU a job gets, and whether a GPU may be given at all: `pool` and `gpu.board`; kept out
  after failures: `quarantine`; its health and events: `gpu.nvml`, `gpu.watch`
- whether the engine restarted under a job: `engine.health`, read by `engine.container`
- the next job started while the last one uploads, or staged ahead: `worker` and `pool`
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("decode-fetcher")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0+unknown"
