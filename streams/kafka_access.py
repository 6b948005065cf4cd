"""Fail fast when the broker refuses who we say we are.

Kafka clients treat a refused login like a broker that is not up yet: they log it and
retry, and a worker can keep retrying for ever. Every command that talks to Kafka
first calls :func:`check_access`, which makes one authenticated connection and turns a
refusal of the credentials, of the mechanism or of the broker's certificate into a
:class:`KafkaAccessDenied` that names the variable to fix. A broker that cannot be
reached is not a refusal: that is left to the clients' own retries.

>>> import asyncio
>>> from flagstream.streams.config import Settings
>>> asyncio.run(check_access(Settings(broker="127.0.0.1:1")))  # PLAINTEXT: nothing to prove
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from flagstream.errors import ConfigurationError
from flagstream.streams.config import Settings

log = logging.getLogger(__name__)


class KafkaAccessDenied(ConfigurationError):
    """The broker refused the configured credentials, mechanism or certificate."""


async def check_access(settings: Settings, timeout_s: float = 15.0) -> None:
    """Authenticate once against the first bootstrap server that answers.

    Raises :class:`KafkaAccessDenied` when the broker refuses the login; returns when
    one server accepted it, or when none answered (the clients will retry those).
    """
    if settings.security_protocol == "PLAINTEXT":
        return
    for server in (b.strip() for b in settings.broker.split(",")):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                            **settings.kafka_security()),
                timeout_s,
            )
        except SaslAuthenticationFailed as exc:
            raise KafkaAccessDenied(
                f"Kafka at {server} refused the login of FLAGSTREAM_SASL_USERNAME="
                f"{settings.sasl_username!r} with FLAGSTREAM_SASL_PASSWORD "
                f"({settings.sasl_mechanism}): {exc}"
            ) from None
        except UnsupportedSaslMechanismError as exc:
            raise KafkaAccessDenied(
                f"Kafka at {server} does not accept FLAGSTREAM_SASL_MECHANISM="
                f"{settings.sasl_mechanism}: {exc}"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessDenied(
                f"the certificate of Kafka at {server} is not trusted by "
                f"FLAGSTREAM_SSL_CAFILE={settings.ssl_cafile or '(system CAs)'}: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:  # no TLS on that port, or our client certificate refused
            raise KafkaAccessDenied(
                f"the TLS handshake with Kafka at {server} failed (FLAGSTREAM_SECURITY_PROTOCOL="
                f"{settings.security_protocol}, FLAGSTREAM_SSL_CERTFILE="
                f"{settings.ssl_certfile or '(none)'}): {exc.reason or exc}"
            ) from None
        except (TimeoutError, OSError, KafkaError) as exc:
            log.warning("Kafka at %s did not answer the access check: %r", server, exc)
            continue
        conn.close()
        log.info("Kafka at %s accepted %s as %r", server, settings.security_protocol,
                 settings.sasl_username or "(certificate)")
        return


def require_access(settings: Settings) -> None:
    """:func:`check_access` for a command's synchronous entry point."""
    asyncio.run(check_access(settings))
