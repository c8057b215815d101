import pytest

from pgbench import tasks
from pgbench.errors import ConfigError
from pgbench.tasks.rewards import RewardTerm, parse_reward_spec, sentence_bleu, sentence_chrf

COME_IN = tasks.Example("Entre.", ("Come in.", "Come on in."))
CAT = tasks.Example("Le chat est noir.", ("The cat is black.",))


@pytest.mark.parametrize(
    ("spec", "terms"),
    [
        ("chrf", [("chrf", 1.0)]),
        ("chrf+0.5*embed", [("chrf", 1.0), ("embed", 0.5)]),
        (" bleu + 2 * comet ", [("bleu", 1.0), ("comet", 2.0)]),
        ("1e-1*chrf+bleu+3*embed", [("chrf", 0.1), ("bleu", 1.0), ("embed", 3.0)]),
    ],
)
def test_reward_specs_parse_into_weighted_terms(spec, terms):
    assert parse_reward_spec(spec) == tuple(RewardTerm(n, w) for n, w in terms)


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("nope", "'nope'"),
        ("chrf+", "''"),
        ("chrf+0.5*", "'0.5*'"),
        ("x*chrf", "'x*chrf'"),
        ("chrf*0.5", "'chrf*0.5'"),
        ("-1*bleu", "'-1*bleu'"),
        ("0*embed", "'0*embed'"),
        ("inf*chrf", "'inf*chrf'"),
        ("chrf+rouge", "'rouge'"),
    ],
)
def test_bad_reward_specs_name_the_term_and_the_valid_names(spec, bad):
    with pytest.raises(ConfigError, match="bad term") as info:
        tasks.get("fr_en", reward=spec)
    message = str(info.value)
    assert f"bad term {bad}" in message and "chrf, bleu, embed, bertscore, comet" in message
    assert "\n" not in message


def test_repeated_reward_is_an_error():
    with pytest.raises(ConfigError, match="chrf appears twice"):
        parse_reward_spec("chrf+0.5*chrf")


def test_weighted_sum_equals_the_sum_of_its_parts():
    task = tasks.get("fr_en", reward="0.3*chrf+2*bleu+0.5*embed")
    completions = [" Come on in. ", "The cat is blak."]
    rewards = task.reward(completions, [COME_IN, CAT])
    # an exact match of a reference scores 1 on every part: 0.3 + 2 + 0.5 = 2.8
    assert rewards[0] == pytest.approx(2.8, abs=1e-5)
    hyp = "The cat is blak."
    parts = (
        0.3 * sentence_chrf(hyp, CAT.references)
        + 2 * sentence_bleu(hyp, CAT.references)
        + 0.5 * task.model_rewards.embed([hyp], [CAT.references])[0]
    )
    assert rewards[1] == pytest.approx(parts) and 0 < rewards[1] < 2.8
