from django.core.management.base import BaseCommand

from twisted_ws4redis.publisher import RedisPublisher
from twisted_ws4redis.redis_store import RedisMessage


class Command(BaseCommand):
    help = "Send a message to every open chat page."

    def add_arguments(self, parser):
        parser.add_argument("message")

    def handle(self, *args, **options):
        publisher = RedisPublisher(facility="chat", broadcast=True)
        receivers = publisher.publish_message(RedisMessage(options["message"]))
        self.stdout.write(f"Sent to {receivers} server process(es).")
