from django.apps import AppConfig


class Ws4RedisConfig(AppConfig):
    name = "twisted_ws4redis"
    verbose_name = "Websockets over Redis"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out
        from django.core import checks as django_checks

        from . import checks
        from .models import check_publishable_models
        from .receivers import close_websockets_at_logout, store_groups_in_session

        django_checks.register(checks.check_settings, checks.TAG)
        django_checks.register(checks.check_runserver_order, checks.TAG)
        django_checks.register(checks.check_ws4redis_leftovers, checks.TAG)
        django_checks.register(checks.check_health_url, checks.TAG)
        django_checks.register(check_publishable_models, checks.TAG, django_checks.Tags.models)

        user_logged_in.connect(store_groups_in_session, dispatch_uid="twisted_ws4redis.memberof")
        user_logged_out.connect(close_websockets_at_logout, dispatch_uid="twisted_ws4redis.logout")
