import gzip
import sys

import pytest
from sacrebleu.metrics import BLEU, CHRF

from pgbench import tasks
from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.errors import ConfigError, DataError
from pgbench.tasks import Example, model_rewards
from pgbench.tasks.fr_en import SYSTEM
from pgbench.tasks.model_rewards import DEFAULT_COMET, ModelRewards
from pgbench.tasks.rewards import corpus_metrics, sentence_chrf


def test_tatoeba_split_is_deterministic_disjoint_and_sized():
    task = tasks.get("fr_en", valid_size=100, test_size=200)
    first, second = task.splits(), task.splits()
    assert first == second
    # the 500 pairs of the unseen slice are in no split (test_fr_en_unseen.py)
    assert first.sizes() == {"train": 70592 - 300 - 500, "valid": 100, "test": 200}
    sources = [{e.source for e in part} for part in (first.train, first.valid, first.test)]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2])
    other = tasks.get("fr_en", valid_size=100, test_size=200, split_seed=1).splits()
    assert other.test != first.test


def test_multi_reference_rewards_and_metrics():
    example = tasks.Example("Entre.", ("Come in.", "Come on in."))
    task = tasks.get("fr_en")
    # the best of several references counts: an exact match of the 2nd reference scores 1
    assert task.reward(["Come on in."], [example]) == [pytest.approx(1.0)]
    assert sentence_chrf("Come in", ["Come in."]) == pytest.approx(
        CHRF().sentence_score("Come in", ["Come in."]).score / 100
    )
    hyps, refs = ["Come in.", "Go away."], [("Come in.", "Come on in."), ("Go.",)]
    metrics = corpus_metrics(hyps, refs)
    streams = [["Come in.", "Go."], ["Come on in.", None]]
    assert metrics["chrf"] == pytest.approx(CHRF().corpus_score(hyps, streams).score)
    assert metrics["bleu"] == pytest.approx(BLEU().corpus_score(hyps, streams).score)
    # the task reports every metric whatever it trains on; embed = mean best cosine x 100,
    # and "Come in." matches a reference exactly (cosine 1)
    scores = tasks.get("fr_en", reward="bleu").metrics(
        hyps, [tasks.Example(f"s{i}", r) for i, r in enumerate(refs)]
    )
    assert set(scores) == {"chrf", "bleu", "embed"}
    assert scores["chrf"] == pytest.approx(metrics["chrf"])
    go_away = task.model_rewards.embed(["Go away."], [("Go.",)])[0]
    assert scores["embed"] == pytest.approx(50 * (1 + go_away), abs=1e-4) and go_away < 1


def test_bertscore_reward_and_metric_best_reference_counts():
    task = tasks.get("fr_en", reward="chrf+0.5*bertscore")
    rewards = task.model_rewards
    assert rewards.bertscorer().num_layers == 5  # of MiniLM-L6's 6, as the docstring says
    # an exact match scores F1 = 1 (every token matches itself, cosine 1); a reference that
    # is another sentence scores less, and with both references the best one counts
    exact, other = rewards.bertscore(["Go away."] * 2, [("Go away.",), ("It is raining.",)])
    assert exact == pytest.approx(1.0, abs=1e-5) and 0 < other < 0.9
    assert rewards.bertscore(["Go away."], [("It is raining.", "Go away.")]) == [
        pytest.approx(1.0, abs=1e-5)
    ]
    example = tasks.Example("Va-t'en.", ("Go away.",))
    assert task.reward(["Go away."], [example]) == [pytest.approx(1.0 + 0.5, abs=1e-5)]
    # rewarded, it is also reported at each evaluation, x 100
    scores = task.metrics(
        ["Go away.", "Go away."], [example, tasks.Example("x", ("It is raining.",))]
    )
    assert set(scores) == {"chrf", "bleu", "embed", "bertscore"}
    assert scores["bertscore"] == pytest.approx(50 * (1 + other), abs=1e-3)


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_file_source_reads_references(tmp_path):
    rows = "fr\ten\n" + "".join(f"phrase {i}\tsentence {i} ||| line {i}\n" for i in range(20))
    train = write(tmp_path / "train.tsv", rows)
    test = write(tmp_path / "test.tsv.gz", "fr\ten\nbonjour\thello ||| hi\n", gz=True)
    task = tasks.get(
        "fr_en",
        source="file",
        train_file=str(train),
        test_file=str(test),
        valid_size=5,
        test_size=1,
    )
    splits = task.splits()
    # the test file replaces the test split only: the default test pair is not trained on
    assert splits.sizes() == {"train": 14, "valid": 5, "test": 1}
    assert splits.test[0].references == ("hello", "hi")


def test_a_test_file_keeps_train_and_valid_and_drops_what_they_contain(tmp_path, capsys):
    default = tasks.get("fr_en", limit=300, valid_size=20, test_size=20).splits()
    rows = [default.train[0], default.valid[3], default.test[0]]  # 2 of 3 already seen
    text = "fr\ten\n" + "".join(f"{e.source}\t{e.references[0]}\n" for e in rows)
    text += "une phrase nouvelle\ta new sentence\n"
    mine = write(tmp_path / "mine.tsv", text)
    task = tasks.get("fr_en", limit=300, valid_size=20, test_size=20, test_file=str(mine))
    splits = task.splits()
    assert splits.train == default.train and splits.valid == default.valid
    assert [e.source for e in splits.test] == [default.test[0].source, "une phrase nouvelle"]
    task.splits()  # computed once: one line, however often the splits are asked for
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "dropped 2 of 4 sentences whose French source is in the train or valid split" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("fr\ten\nbonjour\n", "line 2: expected two non-empty tab-separated columns"),
        ("fr\ten\nbonjour\thello\nsalut\t\n", "line 3"),
        ("de\ten\nhallo\thello\n", "line 1: header is 'de"),
        ("", "is empty"),
        ("fr\ten\n", "no rows"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "bad.tsv", content)
    task = tasks.get("fr_en", source="file", train_file=str(path), valid_size=1, test_size=1)
    with pytest.raises(DataError, match=message):
        task.splits()


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("fr\ten\ncafé\tcoffee\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        tasks.get("fr_en", source="file", train_file=str(path)).splits()
    with pytest.raises(DataError, match="does not exist"):
        tasks.get("fr_en", test_file=str(tmp_path / "nope.tsv")).splits()


def test_conflicting_options():
    with pytest.raises(ConfigError, match="needs task.train_file"):
        tasks.get("fr_en", source="file")
    with pytest.raises(ConfigError, match="only read with task.source=file"):
        tasks.get("fr_en", train_file="x.tsv")


def test_hub_source_uses_fr_en_rows_and_limit(monkeypatch):
    import datasets

    # the dataset's real columns (source, chosen, reject, directions), a few rows of them
    rows = {
        "source": ["Bonjour.", "Hallo.", "Merci.", "Oui."],
        "chosen": ["Hello.", "Hello.", "Thanks.", "Yes."],
        "reject": ["Good day.", "Hi.", "Thank.", "Yeah."],
        "directions": ["fr-en", "de-en", "fr-en", "fr-en"],
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict(rows))
    pairs = tasks.get("fr_en", source="hub", limit=2)._pairs()
    assert [(p.source, p.references) for p in pairs] == [
        ("Bonjour.", ("Hello.",)),
        ("Merci.", ("Thanks.",)),
    ]


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="needs network access.*task.source=tatoeba"):
        tasks.get("fr_en", source="hub").splits()


def test_reward_settings_reach_the_task_at_resolve_time(tmp_path):
    assert tasks.get("fr_en", reward="embed").model_rewards == ModelRewards()
    config = resolve(
        {
            "task.reward": "chrf+0.5*embed",
            "reward.model": str(tmp_path),
            "reward.batch_size": "7",
            "device": "cpu",
        }
    )
    assert config.task.model_rewards == ModelRewards(
        embed_model=str(tmp_path), comet_model=DEFAULT_COMET, device="cpu", batch_size=7
    )
    # with comet rewarded, reward.model is its checkpoint and embed keeps the shipped model
    config = resolve(
        {
            "task.reward": "comet",
            "reward.model": "Unbabel/wmt22-cometkiwi-da",
            "reward.device": "cuda",
            "device": "cpu",
        }
    )
    assert config.task.model_rewards == ModelRewards(
        embed_model="", comet_model="Unbabel/wmt22-cometkiwi-da", device="cuda", batch_size=64
    )
    assert config.to_flat()["reward.model"] == "Unbabel/wmt22-cometkiwi-da"


def test_one_reward_model_for_embed_and_comet_is_ambiguous():
    with pytest.raises(ConfigError, match="reward.model='m' is ambiguous with task.reward=embed"):
        resolve({"task.reward": "embed+comet", "reward.model": "m"})
    assert resolve({"task.reward": "embed+comet"}).task.model_rewards == ModelRewards()


def test_cli_rejects_a_bad_reward_spec_in_one_line(capsys):
    assert main(["run", "task.reward=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "pgbench run: error: task.reward='nope': bad term 'nope'; use [weight*]name terms "
        "joined by + with names chrf, bleu, embed, bertscore, comet and positive weights "
        "(e.g. chrf+0.5*embed)"
    )


def test_cli_fails_before_training_when_comet_is_missing(capsys, monkeypatch, tmp_path):
    model_rewards.load_comet.cache_clear()
    monkeypatch.setitem(sys.modules, "comet", None)  # as if unbabel-comet were not installed
    code = main(["run", "task.reward=comet", f"tracking.uri=sqlite:///{tmp_path}/m.db"])
    model_rewards.load_comet.cache_clear()
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert 'pip install -e ".[comet]"' in err
    assert not list(tmp_path.iterdir())  # nothing was started


def test_reward_keys_are_in_the_help_of_the_verbs_that_score(capsys):
    for verb in ("run", "eval", "sweep", "compare", "variance"):
        assert main([verb, "--help"]) == 0
        out = capsys.readouterr().out
        assert "  reward.model " in out and "  reward.batch_size " in out, verb
    assert main(["report", "--help"]) == 0
    assert "reward.model" not in capsys.readouterr().out


def test_system_message_auto_for_chat_models_none_for_tiny(micro_policy):
    from transformers import AutoTokenizer

    tiny_tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    chat_tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    chat_tokenizer.chat_template = (  # a template that inserts its own system turn, as SmolLM2's
        "{% if messages[0]['role'] != 'system' %}[system]You are a helpful assistant.{% endif %}"
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
    )
    example = Example("Bonjour.", ("Hello.",))
    request = "[user]Translate French to English:\nBonjour.[assistant]"
    auto = tasks.get("fr_en")
    assert auto.prompt(example, tiny_tokenizer) == (
        "<|user|>Translate French to English:\nBonjour.<|end|><|assistant|>"
    )
    assert auto.prompt(example, chat_tokenizer) == f"[system]{SYSTEM}{request}"
    none = tasks.get("fr_en", system="none")
    assert none.prompt(example, chat_tokenizer) == f"[system]You are a helpful assistant.{request}"
    own = tasks.get("fr_en", system="Be brief.")
    assert own.prompt(example, chat_tokenizer) == f"[system]Be brief.{request}"
