// Types of ws4redis.js, the JavaScript client of twisted_ws4redis: every
// option, method and callback the script has, and the server's ops they see.
// The script is UMD: a global in a page (script tag), module.exports for
// require(); ws4redis.d.mts types the ES module beside it.

/// <reference lib="dom" />

export = WS4Redis;
export as namespace WS4Redis;

/** `WS4Redis(options)` (or with `new`): a ws4redis client; `WS4Redis.connect(options)`: a ws4redis.v2 client. */
declare const WS4Redis: WS4Redis.Factory;

declare namespace WS4Redis {
    /** The options of the connection both clients keep open. */
    interface ConnectionOptions {
        /** The websocket URL. */
        uri: string;
        /** Called before each connection attempt. */
        connecting?: () => void;
        /** Called when the socket is open (and, for ws4redis.v2, the subprotocol selected). */
        connected?: () => void;
        /** Called with the close event whenever the socket closes. */
        disconnected?: (event: CloseEvent) => void;
        /** The server's WS4REDIS_HEARTBEAT; null, empty or absent for none. */
        heartbeat_msg?: string | null;
        /** Seconds between heartbeats sent to the server (5). */
        heartbeat_interval?: number;
        /** Longest wait before reconnecting, in seconds (30). */
        max_reconnect_delay?: number;
    }

    /** The ws4redis client's options. */
    interface Options extends ConnectionOptions {
        /** Called with each message (never a heartbeat): text, or binary as `binary_type` says. */
        receive_message?: (data: string | ArrayBuffer | Blob) => void;
        /** How binary messages arrive: 'arraybuffer' (default) or 'blob'. */
        binary_type?: BinaryType;
    }

    /** The current socket's readyState: CONNECTING, OPEN, CLOSING, CLOSED. */
    type ReadyState = 0 | 1 | 2 | 3;

    /** The state methods both clients have, as ws4redis' client had them. */
    interface StateMethods {
        get_state(): ReadyState;
        is_connecting(): boolean;
        is_connected(): boolean;
        is_closing(): boolean;
        is_closed(): boolean;
        /** Closes the socket for good: nothing is reopened. */
        close(): void;
    }

    /** A ws4redis client: one socket, the subscriptions its URL names. */
    interface Socket extends StateMethods {
        /** Sends a message as it is (the socket must be open). */
        send_message(message: string | ArrayBufferLike | Blob | ArrayBufferView): void;
    }

    interface Factory {
        (options: Options): Socket;
        new (options: Options): Socket;
        /** The ws4redis.v2 client: every subscription of the page on one socket. */
        connect(options: ClientOptions): Client;
    }

    /** Whose channel: everybody's, or this socket's own user, groups or session. */
    type Audience = "broadcast" | "user" | "group" | "session";

    /**
     * A refusal of the server, or of the client itself (code 0: the
     * connection closed before the answer, close() came first, or the
     * server did not select ws4redis.v2).
     */
    interface ErrorReply {
        op: "error";
        ref: number | null;
        /** 0, or the server's 400, 403, 429, 500, 503. */
        code: number;
        reason: string;
    }

    /** A message of a subscription, as the server sent it. */
    interface Message {
        op: "message";
        facility: string;
        audience: Audience;
        /** The history's id; null when the server keeps no history or the publisher was not ours. */
        id: string | null;
        /** The payload when it is UTF-8 text. */
        data?: string;
        /** The payload, base64, when it is not. */
        data_b64?: string;
    }

    /** Who is connected to a facility (WS4REDIS_PRESENCE on the server). */
    interface PresenceState {
        users: string[];
        anonymous: number;
        connections: number;
    }

    interface PresenceEvent {
        op: "join" | "leave";
        facility: string;
        user: string;
    }

    interface SubscribedReply {
        op: "subscribed";
        facility: string;
        audience: Audience;
        ref: number | null;
        /** Only after a reconnection (the subscribe gave `since`). */
        recovered?: boolean;
        /** Only when presence was asked for. */
        presence?: PresenceState;
    }

    /** All optional; presence, join or leave ask for the facility's presence. */
    interface SubscriptionCallbacks {
        /** The server subscribed it (again after each reconnection). */
        subscribed?: (reply: SubscribedReply) => void;
        /** After a reconnection: true, the missed messages follow; false, they could not be recovered. */
        recovered?: (ok: boolean) => void;
        /** Refused: the subscription has ended. */
        error?: (reply: ErrorReply) => void;
        /** The facility's presence, at each (re)subscription. */
        presence?: (state: PresenceState) => void;
        /** A user's first socket on the facility opened (on any node). */
        join?: (user: string, event: PresenceEvent) => void;
        /** A user's last socket on the facility closed. */
        leave?: (user: string, event: PresenceEvent) => void;
    }

    /** A subscription, as the page holds it. */
    interface Subscription {
        readonly facility: string;
        readonly audience: Audience;
        /** The id of the last message received with one: where a reconnection recovers from. */
        readonly last_id: string | null;
        /** Ends it at once; done(error) when the server has answered (at once when not connected). */
        unsubscribe(done?: (error: ErrorReply | null) => void): void;
    }

    /** The ws4redis.v2 client's options. */
    interface ClientOptions extends ConnectionOptions {
        /** A server error that answers no request of this client. */
        error?: (reply: ErrorReply) => void;
    }

    /** A ws4redis.v2 client; subscribe() and publish() wait while it is not connected. */
    interface Client extends StateMethods {
        /**
         * Subscribes (or replaces the subscription of the same facility and
         * audience). `data` is a string, or an ArrayBuffer for a payload that
         * is not UTF-8.
         */
        subscribe(
            facility: string,
            audience: Audience,
            receive?: (data: string | ArrayBuffer, message: Message) => void,
            callbacks?: SubscriptionCallbacks,
        ): Subscription;
        /** done(error, id): id is the message's id, null when the server keeps no history. */
        publish(
            facility: string,
            audience: Audience,
            data: string | ArrayBuffer | ArrayBufferView,
            done?: (error: ErrorReply | null, id: string | null) => void,
        ): void;
    }
}
