"""simplejwt token views whose tokens carry `sub` (the username) and `scope` (the user's groups)."""
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.views import TokenObtainPairView

from .auth import user_scopes


class ScopedTokenObtainPairSerializer(TokenObtainPairSerializer):
    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        # Copied into the access token derived from this refresh token (simplejwt copies every
        # claim except token_type, exp, jti and iat), and again on /api/token/refresh/.
        token["sub"] = user.get_username()
        token["scope"] = " ".join(user_scopes(user))
        return token


class ScopedTokenObtainPairView(TokenObtainPairView):
    serializer_class = ScopedTokenObtainPairSerializer
