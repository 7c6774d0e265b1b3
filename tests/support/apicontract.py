"""The HTTP API's contract for the fuzzers: the OpenAPI document as a schemathesis schema, the
checks every response must pass, and Hypothesis settings (tests/unit/test_fuzzing.py against
the in-memory gateway, tests/integration/test_api_contract.py against the running stack)."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks as st_checks

from services.gateway.http.openapi import build_document
from services.gateway.http.routes import ROUTES

EXPLORE = int(os.environ.get("BOTFACTORY_FUZZ_EXAMPLES", "0"))


def bounded(examples: int, deadline_ms: int | None = 2000) -> settings:
    """Hypothesis settings: `examples` derandomized, or BOTFACTORY_FUZZ_EXAMPLES random."""
    return settings(max_examples=EXPLORE or examples, derandomize=not EXPLORE, database=None,
                    deadline=deadline_ms, suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])


# WebSockets are not request/response operations: their handshake headers are documented,
# a fuzzer's HTTP client cannot follow the upgrade.
WEBSOCKETS = [r.name for r in ROUTES if r.websocket]
SCHEMA = schemathesis.openapi.from_dict(build_document(ROUTES)).exclude(operation_id=WEBSOCKETS)
# The tests send the bootstrap key themselves: a case without it would not be what it says.
SCHEMA.config.generation.update(with_security_parameters=False)
CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance,
          st_checks.content_type_conformance, st_checks.response_headers_conformance,
          st_checks.response_schema_conformance,
          # the document is the contract both ways (issue 17): what it allows is accepted,
          # what it does not allow is refused with a 4xx
          st_checks.negative_data_rejection, st_checks.positive_data_acceptance]
# What a schema cannot state: a bot definition that does not load (422: deployed, sent to
# train, or in a version), a span outside the review item's text, the settings each channel
# requires (they differ by the path's channel). Their negative cases are still checked.
SEMANTIC = {"put_definition", "decide_review", "put_channel", "start_training",
            "create_bot_version", "configure_environments"}
