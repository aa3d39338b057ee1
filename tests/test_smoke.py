from __future__ import annotations

from spoke.v1 import user_pb2

from tests.harness import Client


def test_bootstrap_admin_is_current_user(admin: Client) -> None:
    me = admin.users.GetCurrentUser(user_pb2.GetCurrentUserRequest()).user
    assert me.is_admin
