from pgbench.tasks.poetry import rhyme, syllables, word_syllables


def test_syllables_come_from_the_cmu_dictionary_with_a_vowel_group_fallback():
    # literally: L IH1 T ER0 AH0 L IY0 -> 4 stressed-or-not vowels; fire: F AY1 ER0 -> 2
    assert word_syllables("literally") == 4
    assert word_syllables("fire") == 2
    # not in the dictionary: vowel groups o, a, i -> 3
    assert word_syllables("blorptastic") == 3
    # the(1) night(1) is(1) long(1); punctuation and case do not count
    assert syllables("The night is long!") == 4
    # I(1) can't(1) sleep(1) at(1) night(1)
    assert syllables("I can't sleep at night") == 5


def test_rhymes_share_the_rhyming_part_of_some_pronunciation():
    assert rhyme("night", "light")  # AY1 T
    assert rhyme("Night", "TONIGHT")
    assert rhyme("read", "red") and rhyme("read", "seed")  # read: EH1 D or IY1 D
    assert not rhyme("night", "night")  # a word does not rhyme with itself
    assert not rhyme("night", "day")
    assert not rhyme("zzxq", "qzzxq")  # unknown words rhyme with nothing
