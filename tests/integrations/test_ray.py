"""generate_dataset on a local, loopback-only Ray cluster: outputs equal the local loop's whatever the actors and
blocks; bad rows become error rows; no Ray process listens beyond loopback.

The cluster starts once for the module (about 3 s) and is shut down afterwards. Should any Ray process listen on
a non-loopback address, the whole run stops at once: this machine must not be reachable from outside.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray.data", reason="Ray Data is not installed (turbogen[ray])")
pytest.importorskip("transformers")

from turbogen.integrations.batch import OUTPUT_COLUMNS, BatchGenerator  # noqa: E402
from turbogen.integrations.ray import generate_dataset, init_local_cluster, is_loopback, listening_sockets  # noqa: E402

from tiny_models import tiny_model_dir, tiny_model_environment  # noqa: E402,F401  (fixtures)

GREEDY = {"max_new_tokens": 5, "do_sample": False}
SAMPLING = {"max_new_tokens": 5, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
ROWS = [{"id": index, "text": text} for index, text in enumerate([
    "the quick brown fox", "hello", "", "once upon a time there was a small model", "hello", "stop the fox",
    "a stopwatch stopped at the bus stop; nonstop traffic kept going, it never liked to stop early", "the end"])]
MAX_PROMPT_TOKENS = 12

# Ray Data's own DataContext copies trip over its deprecated fields; nothing of ours.
# xdist_group: one worker runs every test that starts Ray (a local cluster per process), one after another.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"), pytest.mark.xdist_group("ray")]


def _stop_unless_loopback_only() -> list:
    sockets = listening_sockets()
    exposed = [entry for entry in sockets if not is_loopback(entry[2])]
    if exposed:
        import ray

        ray.shutdown()
        pytest.exit(f"a Ray process listens on a non-loopback address, stopping: {exposed}", returncode=3)
    return sockets


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    init_local_cluster(num_cpus=2)
    try:
        _stop_unless_loopback_only()
        yield ray
    finally:
        ray.shutdown()


def _run(ray, config: dict, actors: int, blocks: int, batch_size: int) -> list[dict]:
    dataset = ray.data.from_items(ROWS, override_num_blocks=blocks)
    result = generate_dataset(dataset, actors=actors, batch_size=batch_size, **config)
    rows = result.take_all()
    _stop_unless_loopback_only()  # the actors' worker processes listened too
    return [{name: list(row[name]) if name == "generated_token_ids" else row[name]
             for name in ("id", *OUTPUT_COLUMNS)} for row in rows]


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not any(is_loopback(ip) for ip in ("0.0.0.0", "::", "10.1.2.3", "::ffff:10.1.2.3", "192.168.0.1"))


def test_ray_listens_on_loopback_only(ray_cluster):
    sockets = _stop_unless_loopback_only()
    names = {name for _, name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, names
    assert all(is_loopback(ip) for _, _, ip, _ in sockets)


@pytest.mark.parametrize("mode", ["greedy", "sampling"])
def test_outputs_do_not_depend_on_actors_or_blocks(ray_cluster, tiny_model_dir, tiny_model_environment, mode):
    generation_config = GREEDY if mode == "greedy" else SAMPLING
    config = dict(model=tiny_model_dir, generation_config=generation_config, seed=21, key_column="id",
                  max_prompt_tokens=MAX_PROMPT_TOKENS)
    local = BatchGenerator(tiny_model_dir, generation_config, seed=21, key_column="id",
                           max_prompt_tokens=MAX_PROMPT_TOKENS, batch_size=3).generate_rows(ROWS)
    expected = [{name: row[name] for name in ("id", *OUTPUT_COLUMNS)} for row in local]

    one_actor = _run(ray_cluster, config, actors=1, blocks=1, batch_size=8)
    two_actors = _run(ray_cluster, config, actors=2, blocks=4, batch_size=2)
    assert one_actor == expected
    assert two_actors == expected

    # The comparison is discriminating: rows were generated, two failed, and (sampling) the two "hello" rows,
    # keyed by different ids, differ.
    reasons = [row["finish_reason"] for row in expected]
    assert reasons.count("error") == 2 and "empty" in expected[2]["error"]
    assert "over max_prompt_tokens" in expected[6]["error"]
    assert all(len(row["generated_token_ids"]) > 0 for row in expected if row["error"] == "")
    if mode == "sampling":
        assert expected[1]["generated_token_ids"] != expected[4]["generated_token_ids"]


def test_a_dataset_read_from_files_finishes_when_the_actors_take_every_cpu(ray_cluster, tiny_model_dir, tmp_path):
    """Two one-CPU actors on the two-CPU cluster leave no CPU for the read tasks that feed them: without
    generate_dataset producing the input first, Ray Data would wait forever. Guarded by a deadline, so a
    regression fails instead of hanging the suite."""
    import json
    import threading

    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"id": row["id"], "text": row["text"]}) + "\n" for row in ROWS))
    dataset = ray_cluster.data.read_json(str(source))
    result = generate_dataset(dataset, actors=2, batch_size=4, model=tiny_model_dir, generation_config=GREEDY,
                              max_prompt_tokens=MAX_PROMPT_TOKENS)
    rows: list = []
    runner = threading.Thread(target=lambda: rows.extend(result.take_all()), daemon=True)
    runner.start()
    runner.join(timeout=180)
    assert not runner.is_alive(), "the dataset did not finish within 180 s"
    local = BatchGenerator(tiny_model_dir, GREEDY, max_prompt_tokens=MAX_PROMPT_TOKENS).generate_rows(ROWS)
    assert [(row["id"], list(row["generated_token_ids"]), row["finish_reason"]) for row in rows] == \
        [(row["id"], row["generated_token_ids"], row["finish_reason"]) for row in local]
