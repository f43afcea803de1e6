"""`up` on several nodes at once: the first to create the operator keeps its password."""

from __future__ import annotations

from clayops import provisioning


def test_the_second_node_to_create_the_operator_leaves_the_first_ones_password(db):
    assert provisioning.create_operator("operator", "first-password") is True
    assert provisioning.create_operator("operator", "second-password") is False
    user = provisioning.find_user("operator")
    assert user.check_password("first-password") and not user.check_password("second-password")
    assert user.is_staff and provisioning.can_operate(user)
