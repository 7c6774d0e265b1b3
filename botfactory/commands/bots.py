"""`botfactory bots`: which tenant owns each bot (docs/security.md, "Tenants").

`bots list` shows the owner records (KV `bots`, keys `owner.<bot>`); `bots owner BOT` shows a
bot's tenant and `bots owner BOT TENANT` records it (a move between tenants: audited, actor
`cli:<user>`). A bot without a record belongs to the default tenant. Like `botfactory models`,
this talks to NATS as its admin: the gateway's API (`PUT /v1/admin/bots/{bot}/owner`) is the
way for tenant admins.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from botfactory.commands.models import _audit, _nats_option, _run, _tenant


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bots", help="which tenant owns each bot",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the bots with an owner record")
    listing.add_argument("--tenant", type=_tenant, help="only this tenant's")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _nats_option(listing)
    listing.set_defaults(func=run_list)
    owner = actions.add_parser("owner", help="show a bot's tenant, or move it to TENANT")
    owner.add_argument("bot")
    owner.add_argument("tenant", nargs="?", type=_tenant)
    _nats_option(owner)
    owner.set_defaults(func=run_owner)


def run_list(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> dict[str, str]:
        from services.gateway.owners import NatsBotOwners

        return await (await NatsBotOwners.open(bus)).owners()

    code, owners = _run(args.nats, work)
    if code == 0:
        rows = {bot: tenant for bot, tenant in sorted(owners.items())
                if args.tenant is None or tenant == args.tenant}
        print(json.dumps(rows, indent=2) if args.json else
              "\n".join(f"{bot:<32}{tenant}" for bot, tenant in rows.items()) or
              "no owner records (every bot belongs to the default tenant)")
    return code


def run_owner(args: argparse.Namespace) -> int:
    async def work(bus: Any) -> tuple[str | None, str | None]:
        from services.gateway.audit import BOT_OWNER_SET
        from services.gateway.owners import NatsBotOwners

        owners = await NatsBotOwners.open(bus)
        if args.tenant is None:
            return await owners.owner(args.bot), None
        previous = await owners.set_owner(args.bot, args.tenant)
        if previous != args.tenant:
            await _audit(bus, BOT_OWNER_SET, {"bot_id": args.bot, "tenant": args.tenant,
                                              "from": previous,
                                              "recorded_before": previous is not None})
        return args.tenant, previous

    code, result = _run(args.nats, work)
    if code == 0:
        owner, previous = result
        if args.tenant is None:
            print(owner if owner is not None else
                  "no owner record: the default tenant's (BOTFACTORY_GATEWAY_DEFAULT_TENANT)")
        else:
            print(f"{args.bot}: tenant {owner}" + (f" (was {previous})" if previous else ""))
    return code
