"""Choosing the S3 library: install size, import time and per-request signing cost of each option.

    python3 bench/s3_libs.py [SCRATCH_DIR]      (default /tmp/nanostream-s3-libs; needs PyPI access)

For each of botocore (credential chain + SigV4 signer; requests sent by aiohttp),
aiobotocore and obstore it makes a scratch venv under SCRATCH_DIR (never the
project's), ``pip install``s the library alone, and measures in that venv:

- install size: bytes of every file the installed distributions own (pip/setuptools excluded);
- import time: median of 7 cold ``python -c 'import ...'`` minus a bare ``python -c pass``;
- setup: resolving credentials (botocore), creating the client (aiobotocore) or the store (obstore);
- signing: microseconds per signed request (botocore: SigV4 headers of a ranged GET;
  aiobotocore: ``generate_presigned_url``; obstore: ``obstore.sign``, a presigned URL).

Credentials are static env keys so no network is touched. Prints one JSON line per library.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

LIBS = ("botocore", "aiobotocore", "obstore")

PROBE = textwrap.dedent('''
    import json, os, statistics, subprocess, sys, time
    from importlib import metadata
    lib = sys.argv[1]
    IMPORTS = {"botocore": "import botocore.session, botocore.auth, botocore.awsrequest",
               "aiobotocore": "import aiobotocore.session", "obstore": "import obstore, obstore.store"}
    os.environ.update(AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    size = 0
    for dist in metadata.distributions():
        if dist.metadata["Name"].lower() in ("pip", "setuptools"):
            continue
        for f in dist.files or ():
            p = f.locate()
            if os.path.isfile(p):
                size += os.path.getsize(p)
    def cold(code, n=7):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    imp = cold(IMPORTS[lib]) - cold("pass")
    N = 2000
    if lib == "botocore":
        import botocore.session
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        t = time.perf_counter()
        creds = botocore.session.Session().get_credentials().get_frozen_credentials()
        setup = time.perf_counter() - t
        url = "https://bucket.s3.us-east-1.amazonaws.com/data/train-00000.parquet"
        t = time.perf_counter()
        for i in range(N):
            req = AWSRequest("GET", url, headers={"Range": f"bytes={i}-{i + 1000}"})
            S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
        per = (time.perf_counter() - t) / N
    elif lib == "aiobotocore":
        import asyncio, aiobotocore.session
        async def run():
            t = time.perf_counter()
            async with aiobotocore.session.get_session().create_client("s3", region_name="us-east-1") as c:
                setup = time.perf_counter() - t
                t = time.perf_counter()
                for _ in range(N):
                    await c.generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": "k.parquet"})
                return setup, (time.perf_counter() - t) / N
        setup, per = asyncio.run(run())
    else:
        from datetime import timedelta
        import obstore
        from obstore.store import S3Store
        t = time.perf_counter()
        store = S3Store("bucket", region="us-east-1")
        setup = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(N):
            obstore.sign(store, "GET", "k.parquet", timedelta(hours=1))
        per = (time.perf_counter() - t) / N
    versions = {d.metadata["Name"]: d.version for d in metadata.distributions()
                if d.metadata["Name"].lower() in ("botocore", "aiobotocore", "obstore")}
    print(json.dumps({"lib": lib, "versions": versions, "install_MB": round(size / 1e6, 1),
                      "import_s": round(imp, 3), "setup_ms": round(setup * 1000, 1), "sign_us": round(per * 1e6, 1)}))
''')


def main() -> int:
    scratch = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nanostream-s3-libs")
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "probe.py").write_text(PROBE)
    for lib in LIBS:
        env = scratch / lib
        py = env / "bin" / "python"
        if not py.exists():
            venv.create(env, with_pip=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", lib], check=True)
        subprocess.run([str(py), str(scratch / "probe.py"), lib], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
