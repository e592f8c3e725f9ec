"""Drives the server through a Python client generated from its /openapi.json by
openapi-python-client (tests/openapi_client.rs generates it and runs this file).

Usage: openapi_client.py PACKAGE_PARENT BASE_URL IMAGE_PNG OUT_DIR

Submits one JSON job and one multipart job for a video and one JSON portrait job, follows
each job's status to `done`, downloads each result and writes it to OUT_DIR/<id>.mp4 (the
portrait to <id>.png); prints one `job <kind> <id>` line per job.
Any unexpected answer raises (the generated client returns the documented error model).
"""

import base64
import io
import pathlib
import sys
import time

sys.path.insert(0, sys.argv[1])

from ltx_client import Client  # noqa: E402
from ltx_client.api.jobs import result, status, submit, submit_instantid  # noqa: E402
from ltx_client.models import I2VForm, I2VRequest, InstantIdRequest, JobState, JobStatus, Submitted  # noqa: E402
from ltx_client.types import File  # noqa: E402

base_url, image_path, out_dir = sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
png = image_path.read_bytes()
client = Client(base_url=base_url, timeout=120.0, raise_on_unexpected_status=True)

small = dict(prompt="a red ball", width=96, height=64, num_frames=9, steps=2, seed=1)
jobs = []
as_json = submit.sync(client=client, body=I2VRequest(image=base64.b64encode(png).decode(), **small))
assert isinstance(as_json, Submitted), as_json
jobs.append(("json", as_json.id))
form = I2VForm(image=File(payload=io.BytesIO(png), file_name="first.png", mime_type="image/png"), **small)
as_form = submit.sync(client=client, body=form)
assert isinstance(as_form, Submitted), as_form
jobs.append(("multipart", as_form.id))
portrait = submit_instantid.sync(
    client=client,
    body=InstantIdRequest(face_image=base64.b64encode(png).decode(), prompt="a portrait", width=64, height=48, steps=2, seed=1),
)
assert isinstance(portrait, Submitted), portrait
jobs.append(("portrait", portrait.id))

for kind, job_id in jobs:
    deadline = time.monotonic() + 300
    while True:
        s = status.sync(client=client, id=job_id)
        assert isinstance(s, JobStatus), s
        if s.state == JobState.DONE:
            break
        assert s.state in (JobState.QUEUED, JobState.RUNNING), f"{kind} job ended {s.state}: {s.error}"
        assert time.monotonic() < deadline, f"{kind} job stuck in {s.state}"
        time.sleep(0.2)
    file = result.sync(client=client, id=job_id)
    assert isinstance(file, File), f"result is {type(file)}, not a File"
    ext = "png" if kind == "portrait" else "mp4"
    (out_dir / f"{job_id}.{ext}").write_bytes(file.payload.read())
    print(f"job {kind} {job_id}", flush=True)
