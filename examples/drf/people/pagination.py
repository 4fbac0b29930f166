from rest_framework.pagination import PageNumberPagination


class PeoplePagination(PageNumberPagination):
    """?page=N, and ?page_size=N up to 100. `next`/`previous` are absolute URLs built from the
    Host the client used (X-Forwarded-Host through the gateway)."""

    page_size_query_param = "page_size"
    max_page_size = 100
