import gzip

import pytest
from sacrebleu.metrics import BLEU, CHRF

from pgbench import tasks
from pgbench.errors import ConfigError, DataError
from pgbench.tasks.rewards import corpus_metrics, sentence_chrf


def test_tatoeba_split_is_deterministic_disjoint_and_sized():
    task = tasks.get("fr_en", valid_size=100, test_size=200)
    first, second = task.splits(), task.splits()
    assert first == second
    assert first.sizes() == {"train": 70592 - 300, "valid": 100, "test": 200}
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
    assert splits.sizes() == {"train": 15, "valid": 5, "test": 1}
    assert splits.test[0].references == ("hello", "hi")


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

    rows = {
        "directions": ["fr-en", "de-en", "fr-en", "fr-en"],
        "source": ["Bonjour.", "Hallo.", "Merci.", "Oui."],
        "chosen": ["Hello.", "Hello.", "Thanks.", "Yes."],
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
