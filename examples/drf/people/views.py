from rest_framework import permissions, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from peopleapi.auth import HasScope, scopes_of

from .models import Person
from .serializers import PersonSerializer


class PersonViewSet(viewsets.ModelViewSet):
    """People: list and read need the `people:read` scope, changes need `people:write`."""

    queryset = Person.objects.all()
    serializer_class = PersonSerializer
    permission_classes = [permissions.IsAuthenticated, HasScope]
    scope_name = "people"


class WhoAmIView(APIView):
    """Who DRF believes is calling, and how it learnt it (gateway headers or a simplejwt token)."""

    schema = None  # a diagnostic view: not part of the API's OpenAPI document

    def get(self, request):
        auth = request.auth
        via = getattr(auth, "via", None) or ("simplejwt" if auth is not None else None)
        return Response({
            "username": request.user.get_username(),
            "scopes": sorted(scopes_of(request)),
            "via": via,
            "authenticator": type(request.successful_authenticator).__name__,
            "known_user": request.user.pk is not None,
            # What a proxy in front could have told it: the client address, the mount point, the
            # URL it builds links with. The gateway sets these; a client's spoofs never arrive.
            "client": {
                "remote_addr": request.META.get("REMOTE_ADDR"),
                "x_forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
                "script_name": request.META.get("SCRIPT_NAME", ""),
                "url": request.build_absolute_uri(),
            },
        })
