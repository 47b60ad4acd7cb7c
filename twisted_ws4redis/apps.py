from django.apps import AppConfig


class Ws4RedisConfig(AppConfig):
    name = "twisted_ws4redis"
    verbose_name = "Websockets over Redis"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from .signals import store_groups_in_session

        user_logged_in.connect(store_groups_in_session, dispatch_uid="twisted_ws4redis.memberof")
