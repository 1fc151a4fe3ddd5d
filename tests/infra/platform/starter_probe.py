"""What the starter tests run in place of ``prefect.engine``: reports what the forked run sees, then exits."""

import os
import signal
import sys
import time

if __name__ == "__main__":
    print(f"pid={os.getpid()} cwd={os.getcwd()} probe={os.environ.get('PROBE_VALUE')} argv={sys.argv}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if os.environ.get("PROBE_WAIT"):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print("waiting", flush=True)
        time.sleep(60)
    sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
