"""Two JAX processes on one machine, each reading only its share, assemble exactly the one-process batch."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from ctxjax.data import make_pipeline

SCHEDULE = [(4, 16), (4, 16), (8, 8)]

WORKER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, PartitionSpec
    port, index, config, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index,
                               initialization_timeout=60)
    from ctxjax.data import make_pipeline, make_global_batch
    pipe = make_pipeline(config, None)  # process index and count come from jax.distributed
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    saved = {}
    for step, shape in enumerate(json.loads(sys.argv[5])):
        local = pipe.next_batch(*shape)
        global_batch = make_global_batch(local, mesh, PartitionSpec("batch"))
        for key, value in global_batch.items():
            assert value.shape == (shape[0], shape[1]), value.shape
            saved[f"{step}/{key}"] = np.asarray(multihost_utils.process_allgather(value, tiled=True))
            saved[f"{step}/local/{key}"] = local[key]
    saved["documents_read"] = np.array(pipe.stats()["shard_documents"])
    saved["global_state"] = np.array(json.dumps(pipe.global_state()))
    np.savez(out, **saved)
    jax.distributed.shutdown()
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_assemble_the_single_process_batch(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * (3 + 4 * i))
    config = dict(source=f"text:{tmp_path}/*.txt", tokenizer="bytes", num_shards=2, seed=3)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    port = free_port()
    outs = [str(tmp_path / f"out{i}.npz") for i in range(2)]
    workers = [subprocess.Popen(
        [sys.executable, str(script), str(port), str(i), json.dumps(config), outs[i], json.dumps(SCHEDULE)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    for w in workers:
        output, _ = w.communicate(timeout=120)
        assert w.returncode == 0, output.decode()[-3000:]
    results = [np.load(out) for out in outs]

    single = make_pipeline(config, None, process_index=0, process_count=1)
    for step, shape in enumerate(SCHEDULE):
        expected = single.next_batch(*shape)
        half = shape[0] // 2
        for key, value in expected.items():
            for index, result in enumerate(results):
                np.testing.assert_array_equal(result[f"{step}/{key}"], value)  # the assembled global batch
                own_rows = value[index * half:(index + 1) * half]
                np.testing.assert_array_equal(result[f"{step}/local/{key}"], own_rows)
    # Each process tokenized only its own half of the documents.
    assert [int(r["documents_read"]) for r in results] == [5, 5]
    # The merged state of both processes resumes the stream in one process.
    merged = [json.loads(str(r["global_state"])) for r in results]
    assert merged[0] == merged[1] and sorted(merged[0]["shards"]) == ["0", "1"]
    resumed = make_pipeline(config, None, process_index=0, process_count=1)
    resumed.restore(merged[0])
    following, continued = single.next_batch(4, 16), resumed.next_batch(4, 16)
    for key in following:
        np.testing.assert_array_equal(continued[key], following[key])
