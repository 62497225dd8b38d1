"""Property tests of address normalisation in routing: any spelling of an address —
letter case, NFC or NFD, Unicode or A-label domain — selects the same rule."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from gmta.config.parser import Node
from gmta.pipeline.rules import Rules, match_key, parse_rule
from gmta.proto.grammar import domain_to_ascii

# Letters whose upper and lower case map back to each other, with and without
# decompositions (é = e + U+0301), so that case and normal form really vary.
LETTERS = "abcdefghijklmnopqrstuvwxyzéüñøåçßàèö"
label = st.text(LETTERS + "0123456789", min_size=1, max_size=10)
local_part = st.text(LETTERS + "0123456789.+-_", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)
domain = st.lists(label, min_size=1, max_size=3).map(lambda labels: ".".join(labels + ["test"]))
HERE = Node("destination", [], None, "p.conf", 1)


@st.composite
def spelling(draw, text: str, ascii_domain: bool = False) -> str:
    """*text* with random letter case per character and a random normal form."""
    chars = []
    for c in text:
        if c != "ß" and c.upper().lower() == c and len(c.upper()) == 1 and draw(st.booleans()):
            c = c.upper()
        chars.append(c)
    out = "".join(chars)
    return unicodedata.normalize(draw(st.sampled_from(["NFC", "NFD"])), out)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), local=local_part, dom=domain)
def test_any_spelling_of_an_address_selects_the_same_rule(data, local, dom):
    rules: Rules[str] = Rules()
    rules.add(parse_rule(f"{local}@{dom}", HERE), "address")
    rules.add(parse_rule(dom, HERE), "domain")
    rules.default = "default"
    spelled_domain = data.draw(spelling(dom))
    if data.draw(st.booleans()):
        spelled_domain = domain_to_ascii(unicodedata.normalize("NFC", spelled_domain)).upper()
    address = f"{data.draw(spelling(local))}@{spelled_domain}"
    assert rules.select(address).block == "address"
    assert rules.select(f"other{local}x@{spelled_domain}").block == "domain"
    assert rules.select(f"{local}@other-{dom}").block == "default"


@settings(max_examples=100, deadline=None)
@given(data=st.data(), local=local_part, dom=domain)
def test_a_rule_written_in_any_spelling_matches_the_normal_form(data, local, dom):
    written = f"{data.draw(spelling(local))}@{data.draw(spelling(dom))}"
    assert parse_rule(written, HERE) == match_key(f"{local}@{dom}")


@given(st.sampled_from(["postmaster", "POSTMASTER", "PostMaster"]))
def test_bare_postmaster_in_any_case(word):
    rules: Rules[str] = Rules()
    rules.add(parse_rule("PostMaster", HERE), "pm")
    assert rules.select(word).block == "pm"
