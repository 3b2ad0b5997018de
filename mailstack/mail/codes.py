"""SMTP reply codes (RFC 5321 4.2) and enhanced status codes (RFC 3463, RFC 5248 registry).

Named so that a reply reads as what it means (mox's ``smtp/codes.go`` does the same).  The
enhanced code is a full ``class.subject.detail`` string; its class always matches the first
digit of the reply code it goes with.  Shared by the inbound server and outbound delivery.
"""

from __future__ import annotations

# -- reply codes (RFC 5321 4.2.2 and 4.2.3 unless said) -----------------------------------------------

HELP = 214
SERVICE_READY = 220
CLOSING = 221
AUTH_SUCCEEDED = 235  # RFC 4954 6
OK = 250
CANNOT_VRFY = 252
AUTH_CONTINUE = 334  # RFC 4954 4
START_MAIL_INPUT = 354
SERVICE_UNAVAILABLE = 421
LOCAL_ERROR = 451
INSUFFICIENT_STORAGE = 452  # also "too many recipients", RFC 5321 4.5.3.1.10
TEMPORARY_FAILURE = 454  # RFC 3207 4 (TLS not available), RFC 4954 6 (temporary auth failure)
COMMAND_UNRECOGNIZED = 500
SYNTAX_ERROR = 501
BAD_SEQUENCE = 503
PARAMETER_NOT_IMPLEMENTED = 504
AUTH_REQUIRED = 530  # RFC 4954 6
AUTH_INVALID = 535  # RFC 4954 6
ENCRYPTION_REQUIRED = 538  # RFC 4954 6
MAILBOX_UNAVAILABLE = 550
EXCEEDED_STORAGE = 552
MAILBOX_NAME_INVALID = 553
TRANSACTION_FAILED = 554
PARAMETERS_UNRECOGNIZED = 555
DOMAIN_ACCEPTS_NO_MAIL = 556  # RFC 7504 3.1

# -- enhanced status codes (RFC 3463 3, class 2 success, 4 persistent transient, 5 permanent) ----------

E_OK = "2.0.0"  # X.0.0 other undefined status
E_SENDER_OK = "2.1.0"  # X.1.0 other address status
E_RECIPIENT_OK = "2.1.5"  # X.1.5 destination address valid
E_VRFY_REFUSED = "2.5.0"  # X.5.0 other protocol status
E_SECURITY_OK = "2.7.0"  # X.7.0 other security status

E_SYSTEM_TEMPORARY = "4.3.0"  # X.3.0 other or undefined mail system status
E_SYSTEM_FULL = "4.3.1"  # X.3.1 mail system full (RFC 3463)
E_NO_ANSWER = "4.4.1"  # X.4.1 no answer from host
E_CONNECTION_DROPPED = "4.4.2"  # X.4.2 bad connection (also our idle timeout)
E_ROUTING_TEMPORARY = "4.4.3"  # X.4.3 directory server failure (DNS)
E_UNROUTABLE_NOW = "4.4.4"  # X.4.4 unable to route
E_DELIVERY_EXPIRED = "4.4.7"  # X.4.7 delivery time expired
E_TOO_MANY_RECIPIENTS = "4.5.3"  # X.5.3 too many recipients
E_SECURITY_TEMPORARY = "4.7.0"  # X.7.0 other security status
E_NOT_AUTHORIZED_TEMPORARY = "4.7.1"  # X.7.1 not authorized for now (content filter: deferred, unavailable)

E_PERMANENT = "5.0.0"  # X.0.0 other undefined status
E_NO_SUCH_MAILBOX = "5.1.1"  # X.1.1 bad destination mailbox address
E_NO_SUCH_DOMAIN = "5.1.2"  # X.1.2 bad destination system address
E_ADDRESS_SYNTAX = "5.1.3"  # X.1.3 bad destination mailbox address syntax
E_NULL_MX = "5.1.10"  # RFC 7505 4.2: recipient address has null MX
E_ROUTING_LOOP = "5.4.6"  # X.4.6 routing loop detected (too many Received fields)
E_TOO_BIG = "5.3.4"  # X.3.4 message too big for system
E_INVALID_COMMAND = "5.5.1"  # X.5.1 invalid command
E_SYNTAX = "5.5.2"  # X.5.2 syntax error
E_INVALID_ARGUMENTS = "5.5.4"  # X.5.4 invalid command arguments
E_BAD_CONTENT = "5.6.0"  # X.6.0 other or undefined media error (NUL in a message)
E_NON_ASCII_ADDRESS = "5.6.7"  # RFC 6531 3.5: non-ASCII address needs SMTPUTF8
E_BAD_LINE_ENDINGS = "5.6.11"  # RFC 5321 2.3.8: bare CR or LF (SMTP smuggling)
E_SECURITY = "5.7.0"  # X.7.0 other security status (auth required, auth cancelled)
E_NOT_AUTHORIZED = "5.7.1"  # X.7.1 delivery not authorized, message refused
E_BAD_CREDENTIALS = "5.7.8"  # RFC 4954 6: authentication credentials invalid
E_ENCRYPTION_REQUIRED = "5.7.11"  # RFC 4954 6: encryption required for the mechanism
