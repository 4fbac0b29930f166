from django.http import JsonResponse
from django.urls import include, path
from rest_framework.routers import SimpleRouter
from rest_framework_simplejwt.views import TokenRefreshView, TokenVerifyView

from people.views import PersonViewSet, WhoAmIView

from .tokens import ScopedTokenObtainPairView

router = SimpleRouter()
router.register("people", PersonViewSet, basename="person")


def healthz(request):
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("api/", include(router.urls)),
    path("api/token/", ScopedTokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("api/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/token/verify/", TokenVerifyView.as_view(), name="token_verify"),
    path("api/whoami/", WhoAmIView.as_view(), name="whoami"),
    path("healthz", healthz),
]
