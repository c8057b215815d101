import csv
import json
import logging
import uuid

import datasets
import pytest
import torch

from pgbench import estimators
from pgbench.errors import ConfigError, DataError
from pgbench.tasks.base import get
from pgbench.tasks.dataset import DatasetTask

REWARDS = """
CALLS = []


def contains_the(prompts, completions, **columns):
    return [float("the" in c.lower().split()) for c in completions]


def exact(prompts, completions, answer, **columns):
    CALLS.append({"prompts": prompts, "completions": completions, "answer": answer, **columns})
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]


def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def maybe(prompts, completions, **columns):
    return [None if c == "skip" else float(c) for c in completions]


def turns(prompts, completions, **columns):
    CALLS.append({"prompts": prompts, "completions": completions})
    return [float(len(p)) for p in prompts]


def compute_score(data_source, solution_str, ground_truth, extra_info):
    bonus = extra_info["bonus"] if extra_info else 0.0
    if data_source == "dict":
        return {"score": 2.0, "acc": True}
    return float(solution_str == ground_truth) + bonus


def one_value(prompts, completions, **columns):
    return [1.0]


not_a_function = 3
"""

ROWS = [{"prompt": f"Combien font {i} et {i}?", "answer": str(2 * i)} for i in range(10)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`datasets` prepares its Arrow files in the test's folder, not the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


@pytest.fixture
def rewards(tmp_path, monkeypatch):
    """A user's reward module on sys.path, under a fresh name; its import-string prefix."""
    name = f"user_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make(data, reward, **fields):
    """The dataset task from `key=value` text, as the command line gives it."""
    return get("dataset", data=str(data), reward=reward, **fields)


def test_each_file_format_loads_with_its_columns(tmp_path, rewards):
    table = datasets.Dataset.from_list(ROWS)
    files = {
        "jsonl": write_jsonl(tmp_path / "rows.jsonl", ROWS),
        "csv": tmp_path / "rows.csv",
        "parquet": tmp_path / "rows.parquet",
        "folder": tmp_path / "saved",
    }
    table.to_csv(files["csv"], index=False)
    table.to_parquet(files["parquet"])
    table.save_to_disk(files["folder"])
    for kind, path in files.items():
        task = make(path, f"{rewards}:exact", valid_size="2", test_size="3")
        assert isinstance(task, DatasetTask)
        splits = task.splits()
        assert splits.sizes() == {"train": 5, "valid": 2, "test": 3}, kind
        rows = splits.train + splits.valid + splits.test
        # CSV reads "0".."18" back as integers: columns keep the file's own types
        answers = {row.source: str(row.columns["answer"]) for row in rows}
        assert answers == {r["prompt"]: r["answer"] for r in ROWS}, kind


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_data_files_give_one_line_errors(tmp_path, rewards):
    reward = f"{rewards}:length"
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "rows.txt").write_text("prompt\nhi\n")
    write_jsonl(tmp_path / "noprompt.jsonl", [{"question": "hi"}])
    write_jsonl(tmp_path / "badprompt.jsonl", [{"prompt": ""}])
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    cases = {
        "missing.jsonl": "no such file",
        "rows.txt": "unknown format '.txt'",
        "noprompt.jsonl": "no 'prompt' column (columns: question)",
        "empty.jsonl": "is empty",
        "badprompt.jsonl": "row 1: prompt must be non-empty text",
        "broken.jsonl": "cannot be read as json",
    }
    for name, expected in cases.items():
        with pytest.raises(DataError) as error:
            make(tmp_path / name, reward).splits()
        assert expected in one_line(error), name
    with pytest.raises(ConfigError, match="needs task.data"):
        get("dataset", reward=reward)


def test_bad_reward_settings_give_one_line_errors(tmp_path, rewards):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cases = {
        "": "needs task.reward=pkg.module:function",
        "nomodule_xyz:score": "module 'nomodule_xyz' does not import",
        f"{rewards}:nope": "has no 'nope'",
        f"{rewards}:not_a_function": "is not a function",
        f"{rewards}:length,{rewards}:length": "each function needs its own name",
    }
    for spec, expected in cases.items():
        with pytest.raises(ConfigError) as error:
            make(data, spec)
        assert expected in one_line(error), spec
    with pytest.raises(ConfigError, match="must be 2 comma-separated number"):
        make(data, f"{rewards}:length,{rewards}:exact", reward_weights="1")
    task = make(data, f"{rewards}:one_value", valid_size="2", test_size="2")
    with pytest.raises(ConfigError, match="one_value returned 1 values; expected one number"):
        task.reward(["a", "b"], task.splits().train[:2])


def test_trl_reward_gets_prompts_completions_and_columns(tmp_path, rewards):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    task = make(data, f"{rewards}:exact", valid_size="2", test_size="2")
    first, second = task.splits().train[:2]
    examples = [first, first, second, second]  # K = 2 completions of each prompt
    answer = first.columns["answer"]
    scores = task.reward([answer, "nope", second.columns["answer"], answer], examples)
    assert scores == [1.0, 0.0, 1.0, float(answer == second.columns["answer"])]
    calls = __import__(rewards).CALLS
    assert calls[-1]["prompts"] == [first.source, first.source, second.source, second.source]
    assert calls[-1]["answer"] == [answer, answer, second.columns["answer"]] + [
        second.columns["answer"]
    ]
    assert task.messages(first) == [{"role": "user", "content": first.source}]


def test_conversational_prompts_give_message_lists(tmp_path, rewards):
    chats = [
        {"prompt": [{"role": "system", "content": "Sois bref."}, {"role": "user", "content": q}]}
        for q in ("Bonjour ?", "Merci ?", "Salut ?", "Oui ?")
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", chats)
    task = make(data, f"{rewards}:turns", valid_size="1", test_size="1")
    example = task.splits().train[0]
    assert task.messages(example) == example.prompt
    assert [m["role"] for m in example.prompt] == ["system", "user"]
    assert task.reward(["salut"], [example]) == [2.0]  # two messages in the prompt
    call = __import__(rewards).CALLS[-1]
    assert call["prompts"] == [example.prompt]
    assert call["completions"] == [[{"role": "assistant", "content": "salut"}]]


def test_verl_compute_score_reads_its_columns(tmp_path, rewards):
    rows = [
        {"prompt": "a", "data_source": "x", "ground_truth": "4", "extra_info": {"bonus": 0.5}},
        {"prompt": "b", "data_source": "x", "reward_model": {"ground_truth": "9"}},
        {"prompt": "c", "data_source": "dict", "ground_truth": "1"},
    ]
    data = write_jsonl(tmp_path / "verl.jsonl", rows)
    task = make(
        data,
        f"{rewards}:compute_score",
        reward_style="verl",
        valid_data=str(data),
        test_data=str(data),
    )
    a, b, c = task.splits().valid
    # a: "4" == "4" -> 1 + bonus 0.5; b: "8" != "9" -> 0 + no extra_info; c: the dict's score
    assert task.reward(["4", "8", "1"], [a, b, c]) == [1.5, 0.0, 2.0]
    assert task.reward(["3", "9"], [a, b]) == [0.5, 1.0]


def test_none_rewards_take_their_group_mean_and_get_no_advantage(tmp_path, rewards):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    task = make(data, f"{rewards}:maybe", valid_size="2", test_size="2")
    first, second = task.splits().train[:2]
    examples = [first] * 3 + [second] * 3  # two groups of K = 3
    scores = task.reward(["skip", "1", "0", "skip", "skip", "skip"], examples)
    # group 1: None -> mean(1, 0) = 0.5; group 2: all None -> 0
    assert scores == [0.5, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert task.reward_components() is None  # one reward function: no components
    # RLOO: A_1 = 0.5 - mean(1, 0) = 0; A_2 = 1 - mean(0.5, 0) = 0.75; A_3 = 0 - 0.75 = -0.75
    advantages = estimators.get("rloo").advantages(torch.tensor(scores).view(2, 3))
    expected = torch.tensor([[0.0, 0.75, -0.75], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    assert task.reward_metrics() == {
        "train/reward/maybe": 0.5,  # mean of the known 1 and 0
        "train/reward_none_fraction": 4 / 6,
    }
    # evaluation: the mean of the known rewards (1, 0, 3) and the None fraction 2 / 5
    metrics = task.metrics(["1", "skip", "0", "3", "skip"], [first, second] * 2 + [first])
    assert metrics == {"maybe": 4 / 3, "reward": 4 / 3, "none_fraction": 0.4}


def test_weighted_rewards_and_each_component(tmp_path, rewards):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    spec = f"[{rewards}:exact, {rewards}:length]"
    task = make(data, spec, reward_weights="0.7,0.3", valid_size="2", test_size="2")
    example = task.splits().train[0]
    answer = example.columns["answer"]  # one or two digits
    texts = [answer, "wrong!"]
    # exact: 1, 0; length: len(answer), 6 -> 0.7 * 1 + 0.3 * len(answer), 0.3 * 6
    expected = [0.7 + 0.3 * len(answer), 0.3 * 6]
    assert task.reward(texts, [example, example]) == pytest.approx(expected)
    assert task.reward_components() == ([[1.0, 0.0], [len(answer), 6]], [0.7, 0.3])  # gdpo
    assert task.reward_metrics() == pytest.approx(
        {
            "train/reward/exact": 0.5,
            "train/reward/length": (len(answer) + 6) / 2,
            "train/reward_none_fraction": 0.0,
        }
    )
    metrics = task.metrics(texts, [example, example])
    assert metrics["exact"] == 0.5 and metrics["length"] == (len(answer) + 6) / 2
    assert metrics["reward"] == pytest.approx(0.7 * 0.5 + 0.3 * (len(answer) + 6) / 2)
    assert task.metric == "reward"
    listed = make(data, [f"{rewards}:exact", f"{rewards}:length"], reward_weights=[0.7, 0.3])
    assert [(r.name, r.weight) for r in listed.rewards] == [("exact", 0.7), ("length", 0.3)]


def test_separate_metric_function(tmp_path, rewards):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    task = make(
        data, f"{rewards}:length", metric=f"{rewards}:contains_the", valid_size="2", test_size="2"
    )
    example = task.splits().train[0]
    metrics = task.metrics(["the cat", "a cat"], [example, example])
    assert metrics == {"length": 6.0, "reward": 6.0, "none_fraction": 0.0, "contains_the": 0.5}
    assert task.metric == "contains_the"


def test_splits_are_seeded_and_files_replace_them(tmp_path, rewards):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    reward = f"{rewards}:length"

    def sources(task, part):
        return [row.source for row in getattr(task.splits(), part)]

    a = make(data, reward, valid_size="3", test_size="2", split_seed="1")
    b = make(data, reward, valid_size="3", test_size="2", split_seed="1")
    c = make(data, reward, valid_size="3", test_size="2", split_seed="2")
    assert sources(a, "test") == sources(b, "test") and sources(a, "valid") == sources(b, "valid")
    assert sources(a, "test") + sources(a, "valid") != sources(c, "test") + sources(c, "valid")
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"prompt": "Et toi ?", "answer": "1"}])
    d = make(data, reward, valid_data=str(valid), test_size="2")
    assert sources(d, "valid") == ["Et toi ?"]
    assert len(sources(d, "train")) == 8  # 10 rows, 2 held out for test, none for valid
    with pytest.raises(DataError, match="10 examples cannot hold"):
        make(data, reward, valid_size="5", test_size="5").splits()


def test_a_tiny_policy_is_refused_in_one_line(tmp_path, rewards):
    from pgbench.models.resolve import resolve_model

    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    task = make(data, f"{rewards}:length", valid_size="2", test_size="2")
    with pytest.raises(ConfigError) as error:
        resolve_model("tiny", task, str(tmp_path / "cache"))
    assert "with task=dataset use model=smollm2" in one_line(error)


FRENCH = ["Bonjour.", "Merci beaucoup.", "Il fait beau.", "Je suis là.", "Où est le chat ?"]


def test_the_fingerprint_changes_with_the_reward_source_and_the_data(tmp_path, rewards):
    # the start-evaluation cache keys on it: an edited reward or data file is a new start
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "un chat"}] * 3)
    task = make(data, f"{rewards}:contains_the")
    first = task.fingerprint()
    assert first == make(data, f"{rewards}:contains_the").fingerprint()
    module = tmp_path / f"{rewards}.py"
    module.write_text(module.read_text() + "\n# edited\n")
    edited = task.fingerprint()
    assert edited != first
    write_jsonl(data, [{"prompt": "un chien"}] * 3)
    assert task.fingerprint() not in (first, edited)


def test_a_dataset_task_trains_two_steps(micro_policy, rewards, tmp_path, monkeypatch):
    """`pgbench run task=dataset` end to end on the micro fr_en policy: French prompts, a
    reward for saying "the"."""
    from pgbench.config.verbs import resolve
    from pgbench.train.trainer import train

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    data = write_jsonl(tmp_path / "fr.jsonl", [{"prompt": s} for s in FRENCH * 2])
    out = tmp_path / "run"
    summary = train(
        resolve(
            {
                "task": "dataset",
                "task.data": str(data),
                "task.reward": f"{rewards}:contains_the",
                "task.valid_size": "2",
                "task.test_size": "2",
                "estimator": "rloo",
                "model": str(micro_policy),
                "trainer.steps": "2",
                "trainer.prompts_per_step": "2",
                "rollout.samples_per_prompt": "2",
                "rollout.max_new_tokens": "6",
                "eval.every": "0",
                "eval.max_new_tokens": "6",
                "output_dir": str(out),
                "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "cache_dir": str(tmp_path / "cache"),
            }
        )
    )
    assert summary["steps"] == 2
    assert 0 <= summary["train"]["train/reward_mean"] <= 1
    # one reward function: its training mean is the reward's, and no sample had None
    train = summary["train"]
    assert train["train/reward/contains_the"] == pytest.approx(train["train/reward_mean"])
    assert train["train/reward_none_fraction"] == 0
    assert set(summary["eval_after"]) == {"contains_the", "reward", "none_fraction"}
    with (out / "samples.csv").open(newline="") as handle:
        samples = list(csv.DictReader(handle))
    assert samples and {row["source"] for row in samples} <= set(FRENCH)
    assert {row["reference"] for row in samples} == {"{}"}  # no other column
