"""A gs:// workdir and gs:// shards, against a GCS emulator on 127.0.0.1 (gcp-storage-emulator, in memory).

The real clients talk to it: gcsfs (our files, the lock, shards) through STORAGE_EMULATOR_HOST, tensorstore (Orbax's
arrays) through TENSORSTORE_GCS_HTTP_URL. Where the emulator falls short of GCS, the fixture makes it behave as
GCS documents: uploads honour `ifGenerationMatch` (412 when the object's generation differs; 0 = must not
exist), so the lock's create-if-absent is tested as it runs on GCS; media downloads send `x-goog-generation`,
which tensorstore's OCDBT reads (without it: "Malformed StorageGeneration").
"""
import io
import json
import logging
import os
import signal
import socket
import tarfile
from http import HTTPStatus

import numpy as np
import pytest
from fault_runner import faulty_iterators
from harness import CONFIG, ROOT, error_line

BUCKET = "hyperclip-test"


def _precondition(upload):
  """An emulator upload handler that refuses the write when ifGenerationMatch does not hold."""
  from gcp_storage_emulator.exceptions import NotFound

  def checked(request, response, storage):
    want = request.query.get("ifGenerationMatch", [None])[0]
    if want is not None:
      name = request.query["name"][0] if "name" in request.query else request.data["meta"].get("name")
      try:
        current = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
      except NotFound:
        current = "0"
      if current != want:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed"}})
        return None
    return upload(request, response, storage)
  return checked


def _with_generation(download):
  """An emulator download handler that sends x-goog-generation, as GCS does (tensorstore reads it)."""
  from gcp_storage_emulator.exceptions import NotFound

  def wrapped(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      except NotFound:
        return
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])
  return wrapped


@pytest.fixture(scope="module")
def gcs():
  """A bucket on an in-process emulator; the environment points gcsfs and tensorstore at it for this module."""
  saved = dict(os.environ)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  os.environ.update({
      "STORAGE_EMULATOR_HOST": url,  # gcsfs
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax's array writes)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential lookup
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no gRPC bucket-type probe (the emulator has none)
  })
  import fsspec
  import gcsfs.core
  from gcp_storage_emulator import server as server_lib
  from gcp_storage_emulator.handlers import objects
  from gcp_storage_emulator.server import create_server
  fsspec.register_implementation("gs", gcsfs.core.GCSFileSystem, clobber=True)
  fsspec.register_implementation("gcs", gcsfs.core.GCSFileSystem, clobber=True)
  gcs_conf = {k: dict(fsspec.config.conf.get(k, {})) for k in ("gs", "gcs")}
  for k in ("gs", "gcs"):
    fsspec.config.conf.setdefault(k, {})["token"] = "anon"
  gcsfs.core.GCSFileSystem.clear_instance_cache()
  uploads = objects._media_upload, objects._multipart_upload
  objects._media_upload, objects._multipart_upload = (_precondition(u) for u in uploads)
  download, objects.download = objects.download, _with_generation(objects.download)
  routes = [h for _, h in server_lib.HANDLERS if h.get("GET") is download]
  for h in routes:
    h["GET"] = objects.download
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are how clients probe
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  server._api._httpd.handle_error = lambda *a: None  # clients closing kept-alive connections
  try:
    yield f"gs://{BUCKET}"
  finally:
    server.stop()
    objects._media_upload, objects._multipart_upload = uploads
    objects.download = download
    for h in routes:
      h["GET"] = download
    fsspec.config.conf.update(gcs_conf)
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    os.environ.clear()
    os.environ.update(saved)


def test_lock_object_refuses_a_second_trainer_in_one_line(gcs):
  from hyperclip_jax import guards, storage
  workdir = f"{gcs}/locked"
  first = guards.WorkdirLock(workdir)
  assert storage.read_bytes(f"{workdir}/.lock").decode().startswith(f"pid {os.getpid()} on ")
  with pytest.raises(guards.WorkdirBusy) as e:
    guards.WorkdirLock(workdir)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"workdir {workdir} is in use by another trainer (pid {os.getpid()} on ")
  assert f"delete {workdir}/.lock and rerun" in msg
  first.release()
  assert not storage.exists(f"{workdir}/.lock")
  with guards.WorkdirLock(workdir):  # free again
    pass
  # a killed trainer's lock stays (object stores have no process to watch): refused until deleted
  storage.write_bytes(f"{workdir}/.lock", b"pid 1 on lost-vm since 2026-01-01T00:00:00Z, lock id 0")
  with pytest.raises(guards.WorkdirBusy, match=r"\(pid 1 on lost-vm since .*\); stop it first"):
    guards.WorkdirLock(workdir)
  storage.remove(f"{workdir}/.lock")
  guards.WorkdirLock(workdir).release()


def test_metrics_on_an_object_store_accumulate_across_runs(gcs):
  from hyperclip_jax import metrics, storage
  workdir = f"{gcs}/metrics"
  writer = metrics.MetricWriter(workdir, sync_every_s=3600)
  writer.write(1, {"train/loss": np.float32(0.5)})
  writer.write(2, {"train/loss": 0.25})
  assert not storage.exists(f"{workdir}/metrics.jsonl")  # staged until the next sync
  writer.close()
  resumed = metrics.MetricWriter(workdir, sync_every_s=0)  # every row uploaded at once
  resumed.write(3, {"train/loss": 0.125})
  rows = [json.loads(line) for line in storage.read_bytes(f"{workdir}/metrics.jsonl").decode().splitlines()]
  assert rows == [{"step": 1, "train/loss": 0.5}, {"step": 2, "train/loss": 0.25}, {"step": 3, "train/loss": 0.125}]
  resumed.close()
  fs, path = storage.filesystem(f"{workdir}/tensorboard")
  events = fs.ls(path, detail=True)
  assert len(events) == 2 and all(e["size"] > 0 for e in events)  # one event file per writer


def _tar(samples):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, data in samples:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def test_webdataset_shards_are_listed_and_read_from_gs(gcs):
  from hyperclip_jax import storage
  from hyperclip_jax.data.sources import webdataset
  shards = {f"{gcs}/shards/{i:05d}.tar": _tar([(f"s{i}_{j}.txt", f"caption {i} {j}".encode()) for j in range(3)])
            for i in range(3)}
  for path, data in shards.items():
    storage.write_bytes(path, data)
  assert webdataset.expand_pattern(f"{gcs}/shards/*.tar") == sorted(shards)
  assert webdataset.expand_pattern(f"{gcs}/shards/{{00000..00001}}.tar") == sorted(shards)[:2]
  samples = list(webdataset.read_shard(sorted(shards)[1], skip=1))
  assert [s["txt"] for s in samples] == [b"caption 1 1", b"caption 1 2"]


def test_checkpoint_round_trip_on_gs(gcs):
  import jax
  import jax.numpy as jnp

  from hyperclip_jax import checkpoint, storage
  workdir = f"{gcs}/ckpt"
  state = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "step": jnp.int32(7)}
  saver = checkpoint.Checkpointer(workdir, async_save=True, owner=True)
  saver.save(7, state, {"next_step": 7}, {"model": "tiny"})
  saver.close()
  assert saver.directory == f"{workdir}/checkpoints"
  assert storage.isfile(f"{workdir}/checkpoints/7/commit_success.txt")  # GCS commits by marker, not rename
  reader = checkpoint.Checkpointer(workdir)
  step, restored, data, run = reader.restore_latest(checkpoint.abstract_like(state), {"model": "tiny"})
  reader.close()
  assert (step, data) == (7, {"next_step": 7})
  assert run["fingerprint"] == checkpoint.fingerprint(state)
  np.testing.assert_array_equal(jax.device_get(restored["w"]), np.arange(12, dtype=np.float32).reshape(3, 4))


def test_sigterm_then_rerun_on_a_gs_workdir_is_bit_exact(gcs, reference, monkeypatch, capfd):
  """The trainer with --workdir gs://...: stopped by SIGTERM at step 6, rerun to the end: same params as the
  uninterrupted local run; config.json, metrics.jsonl (both runs' rows) and final_eval.json land in the bucket."""
  from hyperclip_jax import storage, train
  from hyperclip_jax.data import input_pipeline
  workdir = f"{gcs}/run"
  argv = ["--workdir", workdir, *CONFIG, "--config.checkpoint_every_steps=1000"]  # saves: the stop and the end
  make = input_pipeline.make_train_iterator
  monkeypatch.setattr(input_pipeline, "make_train_iterator",
                      faulty_iterators(make, 6, lambda batch: os.kill(os.getpid(), signal.SIGTERM)))
  monkeypatch.chdir(ROOT)
  assert train.main(argv) == 75
  assert "checkpoint step 6 saved" in error_line(capfd.readouterr().err)
  assert not storage.exists(f"{workdir}/.lock")  # released on the way out
  monkeypatch.setattr(input_pipeline, "make_train_iterator", make)
  assert train.main(argv) == 0
  assert f"resumed from step 6 ({workdir}/checkpoints)" in capfd.readouterr().err
  rows = [json.loads(line) for line in storage.read_bytes(f"{workdir}/metrics.jsonl").decode().splitlines()]
  assert rows[-1]["params_checksum"] == reference[1]
  assert {r["step"] for r in rows if "train/loss" in r} == set(range(1, 13))
  assert json.loads(storage.read_bytes(f"{workdir}/config.json"))["total_steps"] == 12
  assert json.loads(storage.read_bytes(f"{workdir}/final_eval.json"))["colour"]["num_classes"] == 8
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # no local directory named after the URI


def test_unusable_workdir_schemes_are_one_line_errors():
  from hyperclip_jax import config, storage, workdir
  with pytest.raises(config.ConfigError, match=r"^workdir memory://run: Orbax checkpoints cannot be written to "
                                               r"memory:// paths; use a local path or one of gs://"):
    workdir.create("memory://run")
  with pytest.raises(storage.StorageError, match=r"^nosuch://b/x: cannot open nosuch:// paths .*use a local path"):
    storage.filesystem("nosuch://b/x")
  assert storage.resolve("gs://b/run/") == "gs://b/run" and storage.join("gs://b/run", "a", "b") == "gs://b/run/a/b"
