"""Kafka security: checked once when settings are made, applied the same way to every client.

:func:`check` refuses a combination of ``FLAGSTREAM_SECURITY_PROTOCOL``,
``FLAGSTREAM_SASL_*`` and ``FLAGSTREAM_SSL_*`` that would connect with less protection
than asked for, naming the variable. :func:`client_options` is the one place the
keyword arguments of an aiokafka client are built, and :func:`faust_credentials` the
one place the Faust worker's are; both refuse to hand out anything that would connect
with another protocol than the configured one (``tests/test_kafka_security.py`` walks
the source and fails when a client is built without them).

>>> from flagstream.streams.config import Secret, Settings
>>> s = Settings(security_protocol="sasl_ssl", sasl_mechanism="scram-sha-512",
...              sasl_username="alice", sasl_password=Secret("pw"))
>>> s.security_protocol, s.sasl_mechanism
('SASL_SSL', 'SCRAM-SHA-512')
>>> options = client_options(s)
>>> options["security_protocol"], options["sasl_mechanism"], "ssl_context" in options
('SASL_SSL', 'SCRAM-SHA-512', True)
>>> Settings(security_protocol="SASL_SSL")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
flagstream.errors.ConfigurationError: FLAGSTREAM_SASL_MECHANISM must be one of PLAIN, ... when ...=SASL_SSL
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from flagstream.errors import ConfigurationError

if TYPE_CHECKING:
    from flagstream.streams.config import Settings

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def normalise(value: str) -> str:
    """A protocol or mechanism as Kafka spells it: ``' sasl_ssl '`` → ``'SASL_SSL'``."""
    return value.strip().upper()


def _var(field_name: str) -> str:
    return f"FLAGSTREAM_{field_name.upper()}"


def check(s: Settings) -> None:
    """Raise :class:`ConfigurationError` naming the variable of the first contradiction.

    Expects normalised values (``Settings`` normalises before it calls this).
    """
    protocol, mechanism = s.security_protocol, s.sasl_mechanism
    if protocol not in PROTOCOLS:
        raise ConfigurationError(
            f"FLAGSTREAM_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    if mechanism and mechanism not in MECHANISMS:
        raise ConfigurationError(
            f"FLAGSTREAM_SASL_MECHANISM={mechanism!r} is not one of {', '.join(MECHANISMS)}"
        )
    if protocol in SASL_PROTOCOLS:
        if not mechanism:
            raise ConfigurationError(
                f"FLAGSTREAM_SASL_MECHANISM must be one of {', '.join(MECHANISMS)} "
                f"when FLAGSTREAM_SECURITY_PROTOCOL={protocol}"
            )
        if not s.sasl_username:
            raise ConfigurationError(
                f"FLAGSTREAM_SASL_USERNAME must be set when FLAGSTREAM_SECURITY_PROTOCOL={protocol}"
            )
        if not s.sasl_password:
            raise ConfigurationError(
                f"FLAGSTREAM_SASL_PASSWORD must be set when FLAGSTREAM_SECURITY_PROTOCOL={protocol}"
            )
        if protocol == "SASL_PLAINTEXT" and mechanism == "PLAIN":
            if not s.sasl_plain_cleartext:
                raise ConfigurationError(
                    "FLAGSTREAM_SASL_MECHANISM=PLAIN over FLAGSTREAM_SECURITY_PROTOCOL=SASL_PLAINTEXT "
                    "sends the password in the clear: use SASL_SSL or a SCRAM mechanism, or accept "
                    "it with FLAGSTREAM_SASL_PLAIN_CLEARTEXT=1"
                )
            log.warning("FLAGSTREAM_SASL_PLAIN_CLEARTEXT=1: the Kafka password of %r crosses the "
                        "network in the clear (SASL PLAIN without TLS)", s.sasl_username)
    elif mechanism:
        raise ConfigurationError(
            f"FLAGSTREAM_SASL_MECHANISM={mechanism} needs FLAGSTREAM_SECURITY_PROTOCOL=SASL_PLAINTEXT "
            f"or SASL_SSL, not {protocol}"
        )
    for name in SSL_FILES:
        path = getattr(s, name)
        if not path:
            continue
        if protocol not in TLS_PROTOCOLS:
            raise ConfigurationError(
                f"{_var(name)} is set but FLAGSTREAM_SECURITY_PROTOCOL={protocol} does not use TLS "
                "(SSL or SASL_SSL)"
            )
        if not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigurationError(f"{_var(name)}={path!r} is not a readable file")
    if s.ssl_keyfile and not s.ssl_certfile:
        raise ConfigurationError("FLAGSTREAM_SSL_KEYFILE is set without FLAGSTREAM_SSL_CERTFILE")


def client_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client (producer, consumer, admin, connection)."""
    protocol = s.security_protocol
    if protocol not in PROTOCOLS:  # Settings refuses it; this guards a copy made around it
        raise ConfigurationError(f"FLAGSTREAM_SECURITY_PROTOCOL={protocol!r} is not one of {PROTOCOLS}")
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = s.sasl_mechanism
        options["sasl_plain_username"] = s.sasl_username
        options["sasl_plain_password"] = s.sasl_password.reveal()
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = ssl_context(s)
    return options


def ssl_context(s: Settings) -> Any:
    """A verifying TLS context: the configured CA (or the system's), an optional client cert."""
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(cafile=s.ssl_cafile or None, certfile=s.ssl_certfile or None,
                              keyfile=s.ssl_keyfile or None)


def faust_credentials(s: Settings) -> Any:
    """``broker_credentials`` for a Faust app, checked against what Faust hands to aiokafka.

    Faust decides the protocol from the type of the credentials object (and SASL over
    TLS only when it has an SSL context); the result is read back through Faust's own
    conversion, so the worker cannot connect with less than the configured protocol.
    """
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    options = client_options(s)
    protocol = options["security_protocol"]
    credentials: Any = None
    if protocol in SASL_PROTOCOLS:
        credentials = faust.SASLCredentials(
            username=options["sasl_plain_username"], password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"], ssl_context=options.get("ssl_context"),
        )
    elif protocol == "SSL":
        credentials = faust.SSLCredentials(options["ssl_context"])
    given = credentials_to_aiokafka_auth(credentials, None)
    if {k: given.get(k) for k in options} != options:
        raise ConfigurationError(
            f"FLAGSTREAM_SECURITY_PROTOCOL={protocol}: Faust would connect with "
            f"{given.get('security_protocol')} ({type(credentials).__name__})"
        )
    return credentials
