"""
Authentication and scopes for the example.

GatewayIdentityAuthentication believes the identity headers Portcullis sets
(X-Authenticated-User / -Scopes / -Via) — but only on requests whose TCP peer is one of
GATEWAY_TRUSTED_ADDRESSES. From anywhere else the headers are ignored (and logged), so a
client that reaches DRF directly cannot claim to be someone. The gateway removes client-sent
copies of these headers before it sets its own.

Never put a proxy that does not strip these headers between the gateway and DRF, and never
derive the peer address from X-Forwarded-For here: REMOTE_ADDR is the TCP peer.
"""
import ipaddress
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework import authentication, permissions
from rest_framework_simplejwt.tokens import AccessToken

log = logging.getLogger(__name__)


def _networks():
    nets = []
    for entry in settings.GATEWAY_IDENTITY["TRUSTED_ADDRESSES"]:
        nets.append(ipaddress.ip_network(entry, strict=False))
    return nets


def _meta_key(header):
    return "HTTP_" + header.upper().replace("-", "_")


class GatewayUser:
    """A user the gateway authenticated but who has no row in this app's database."""

    is_active = True
    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, username):
        self.username = username

    def __str__(self):
        return self.username

    def get_username(self):
        return self.username


class GatewayIdentity:
    """request.auth for gateway-authenticated requests."""

    def __init__(self, username, scopes, via):
        self.username = username
        self.scopes = scopes
        self.via = via


class GatewayIdentityAuthentication(authentication.BaseAuthentication):
    def __init__(self):
        self.networks = _networks()
        conf = settings.GATEWAY_IDENTITY
        self.user_key = _meta_key(conf["USER_HEADER"])
        self.scopes_key = _meta_key(conf["SCOPES_HEADER"])
        self.via_key = _meta_key(conf["VIA_HEADER"])

    def from_gateway(self, request):
        try:
            peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        if peer.version == 6 and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in net for net in self.networks)

    def authenticate(self, request):
        meta = request.META
        username = meta.get(self.user_key)
        if not username:
            return None
        if not self.from_gateway(request):
            log.warning("identity headers from %s ignored: not a trusted gateway address", meta.get("REMOTE_ADDR"))
            return None
        scopes = meta.get(self.scopes_key, "").split()
        via = meta.get(self.via_key, "gateway")
        user = get_user_model().objects.filter(username=username, is_active=True).first() or GatewayUser(username)
        return (user, GatewayIdentity(username, scopes, via))

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


def scopes_of(request):
    """The scopes the request carries: from the gateway's headers or the simplejwt token."""
    auth = request.auth
    if isinstance(auth, GatewayIdentity):
        return set(auth.scopes)
    if isinstance(auth, AccessToken):
        scope = auth.get("scope", "")
        return set(scope.split() if isinstance(scope, str) else scope)
    return set()


def user_scopes(user):
    """The scopes a user's tokens carry: the names of their groups, all of them for superusers."""
    if user.is_superuser:
        return ["people:read", "people:write"]
    return sorted(user.groups.values_list("name", flat=True))


class HasScope(permissions.BasePermission):
    """Safe methods need `<view.scope_name>:read`, the others `<view.scope_name>:write`."""

    message = "Your token does not carry the scope this request needs."

    def has_permission(self, request, view):
        base = getattr(view, "scope_name", None)
        if base is None:
            return True
        needed = f"{base}:read" if request.method in permissions.SAFE_METHODS else f"{base}:write"
        return needed in scopes_of(request)
