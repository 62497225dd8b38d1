import pytest

from gmta.delivery import PartialDeliveryError
from gmta.errors import SMTPError

PERM = SMTPError(550, (5, 1, 1), "no such user")
TEMP = SMTPError(452, (4, 2, 2), "over quota")


def test_summary_is_temporary_when_any_recipient_can_be_retried():
    error = PartialDeliveryError({"a@x": None, "b@x": PERM, "c@x": TEMP})
    assert (error.code, error.enhanced) == (452, (4, 2, 2))
    assert error.temporary
    assert error.delivered == ["a@x"]
    assert error.failed == {"b@x": PERM, "c@x": TEMP}
    assert "2 of 3 recipients failed, 1 delivered" in error.text


def test_summary_is_permanent_when_every_failure_is():
    error = PartialDeliveryError({"a@x": None, "b@x": PERM})
    assert (error.code, error.enhanced) == (550, (5, 1, 1))
    assert not error.temporary


def test_needs_a_failure():
    with pytest.raises(ValueError):
        PartialDeliveryError({"a@x": None})
