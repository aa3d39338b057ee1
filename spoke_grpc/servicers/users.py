"""spoke.v1.UserService."""

from __future__ import annotations

from grpc import aio
from spoke.v1 import user_pb2, user_pb2_grpc

from spoke_grpc import pagination
from spoke_grpc.app import App
from spoke_grpc.call import current_call
from spoke_grpc.domain import users as domain
from spoke_grpc.servicers.convert import timestamp
from spoke_grpc.store import users as store
from spoke_grpc.store.users import ApiTokenRow
from spoke_grpc.types import User

_TOKEN_KEY = (pagination.timestamp, pagination.uuid_part)


def user_to_proto(row: User) -> user_pb2.User:
    return user_pb2.User(
        id=str(row.id),
        email=row.email,
        display_name=row.display_name,
        is_admin=row.is_admin,
        create_time=timestamp(row.created_at),
    )


def token_to_proto(row: ApiTokenRow) -> user_pb2.ApiToken:
    return user_pb2.ApiToken(
        id=str(row.id),
        description=row.description,
        prefix=row.prefix,
        create_time=timestamp(row.created_at),
    )


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def GetCurrentUser(
        self, request: user_pb2.GetCurrentUserRequest, context: aio.ServicerContext
    ) -> user_pb2.GetCurrentUserResponse:
        # The user was read with the token: no statement of its own.
        principal = current_call().require_principal()
        return user_pb2.GetCurrentUserResponse(user=user_to_proto(principal.user))

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context: aio.ServicerContext
    ) -> user_pb2.CreateUserResponse:
        call = current_call()
        new = domain.NewUser(
            email=request.email, display_name=request.display_name, is_admin=request.is_admin
        )
        created = await domain.create_user(
            await call.connection(),
            new,
            actor_id=call.require_principal().user_id,
            method=call.policy.method,
        )
        return user_pb2.CreateUserResponse(
            user=user_to_proto(created.user), token=created.token.value
        )

    async def CreateApiToken(
        self, request: user_pb2.CreateApiTokenRequest, context: aio.ServicerContext
    ) -> user_pb2.CreateApiTokenResponse:
        call = current_call()
        row, token = await domain.create_api_token(
            await call.connection(),
            call.require_principal(),
            request.description,
            max_live=self._app.settings.max_tokens_per_user,
            method=call.policy.method,
        )
        return user_pb2.CreateApiTokenResponse(api_token=token_to_proto(row), token=token.value)

    async def ListApiTokens(
        self, request: user_pb2.ListApiTokensRequest, context: aio.ServicerContext
    ) -> user_pb2.ListApiTokensResponse:
        call = current_call()
        principal = call.require_principal()
        pages = self._app.pages
        page = pages.request(
            "api_tokens", principal.user_id, request.page_size, request.page_token, _TOKEN_KEY
        )
        rows = await store.list_tokens(await call.connection(), principal.user_id, page)
        return user_pb2.ListApiTokensResponse(
            api_tokens=[token_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "api_tokens", principal.user_id, rows, page, lambda r: [r.created_at, r.id]
            ),
        )

    async def RevokeApiToken(
        self, request: user_pb2.RevokeApiTokenRequest, context: aio.ServicerContext
    ) -> user_pb2.RevokeApiTokenResponse:
        call = current_call()
        await domain.revoke_api_token(
            await call.connection(),
            call.require_principal().user_id,
            request.api_token_id,
            method=call.policy.method,
        )
        return user_pb2.RevokeApiTokenResponse()
