// A wrong use without @ts-expect-error: tsc must refuse it.
import WS4Redis = require("twisted-ws4redis");

WS4Redis.connect({ uri: "ws://localhost/ws/" }).subscribe("chat", "everybody", (data: number) => data);
