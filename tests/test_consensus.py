from projections.consensus import acceptance_score, ranked_pairs


def test_unanimous_rankings_keep_their_order():
    assert ranked_pairs([["c", "a", "b"]] * 3) == ["c", "a", "b"]


def test_majority_wins_and_condorcet_cycle_breaks_on_strongest_margin():
    # a cycle a>b (6:3), b>c (7:2), c>a (5:4): b>c and a>b lock first, c>a would close the cycle
    rankings = [["a", "b", "c"]] * 4 + [["b", "c", "a"]] * 3 + [["c", "a", "b"]] * 2
    assert ranked_pairs(rankings) == ["a", "b", "c"]


def test_only_ids_present_in_every_ranking_count():
    assert ranked_pairs([["x", "b", "a"], ["b", "a"]]) == ["b", "a"]
    assert ranked_pairs([["x", "a"], ["y", "a"]]) == []


def test_ties_go_to_the_lower_sorted_id():
    assert ranked_pairs([["b", "a"], ["a", "b"]]) == ["a", "b"]


def test_no_rankings_no_order():
    assert ranked_pairs([]) == []


def test_acceptance_score_follows_oa_rule():
    one_spam = [{"spam": 1.0}, {"spam": 0.0}, {"spam": 0.0}]
    two_spam = [{"spam": 1.0}, {"spam": 1.0}, {"spam": 0.0}]
    assert round(acceptance_score(one_spam), 3) == 0.667
    assert round(acceptance_score(two_spam), 3) == 0.333
    assert acceptance_score([{"spam": 0.0, "lang_mismatch": 1.0}]) == 0.0
