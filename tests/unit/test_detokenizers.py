"""Detokenizers: golden strings for the SEDD/MDLM/RADD rules, quirks included."""

from __future__ import annotations

import pytest

from dlm.data.detokenizers import (
    DETOKENIZERS,
    get_detokenizer,
    lambada_detokenizer,
    lm1b_detokenizer,
    ptb_detokenizer,
    wt_detokenizer,
)
from dlm.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" = = Career = = \n", " == Career ==\n"),
        (" = = = Early life = = = \n", " === Early life ===\n"),
        (
            'The 2 @,@ 000 @-@ year @-@ old ( approx . 3 @.@ 5 m ) " quoted text " , it \'s here ; see [ 1 ] . \n',
            'The 2,000-year-old (approx. 3.5 m) "quoted text", it\'s here; see [1].\n',
        ),
        (" the players ' union said . \n", " the players' union said.\n"),
        (
            "a temperature of 20 ° C : cold ! really ? yes \n more",
            "a temperature of 20°C: cold! really? yes\nmore",
        ),
        # no trailing space after the full stop: the " . " rule does not fire (reference behaviour)
        ("end .", "end ."),
    ],
)
def test_wt_detokenizer_golden(raw, expected):
    assert wt_detokenizer(raw) == expected


def test_wt_detokenizer_on_wikitext2_test_lines(shared_data):
    path = shared_data / "eval" / "wikitext2" / "test.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert wt_detokenizer(lines[1]) == " = Robert <unk> =\n"
    assert wt_detokenizer(lines[12]).startswith(
        ' He had a recurring role in 2003 on two episodes of The Bill, as character "Connor Price". '
        'In 2004 <unk> landed a role as "Craig" in the episode "Teddy\'s Story" of the television series '
        "The Long Firm; he starred alongside actors Mark Strong and Derek Jacobi. "
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "the company 's stock fell N N N to $ N a share \n it did n't <unk> 1\\/2",
            "the company's stock fell 1 1 1 to $1 a share\nit didn't ? 1/2",
        ),
        ("investors ' fears rose # N points ", "investors' fears rose #1 points "),
    ],
)
def test_ptb_detokenizer_golden(raw, expected):
    assert ptb_detokenizer(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            'He said : " it \'s fine , really . " ( see http : / / example.com / page ) for $ 5 or £ 3 ?',
            'He said: "it\'s fine, really." (see http://example.com/page) for $5 or £3?',
        ),
        ("Why not !", "Why not!"),
        ("The U.S. economy grew .", "The U.S. economy grew."),
        ("Is it [ really ] over ? No .", "Is it [really] over? No."),
    ],
)
def test_lm1b_detokenizer_golden(raw, expected):
    assert lm1b_detokenizer(raw) == expected


def test_lambada_detokenizer_golden():
    assert lambada_detokenizer("  \u201cHello,\u201d she said.  ") == '\n"Hello," she said.'


def test_get_detokenizer():
    assert get_detokenizer(None)("a , b") == "a , b"
    assert get_detokenizer("wikitext") is wt_detokenizer
    assert set(DETOKENIZERS) == {"wikitext", "ptb", "lm1b", "lambada"}
    with pytest.raises(
        ConfigError, match=r"data\.detokenizer='wt' is unknown; valid: wikitext, ptb, lm1b, lambada"
    ):
        get_detokenizer("wt")
