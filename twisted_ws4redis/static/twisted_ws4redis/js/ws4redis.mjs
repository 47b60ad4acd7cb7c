// ES module entry point: `import WS4Redis, {connect} from '.../ws4redis.mjs'`.
// The client itself is the classic script beside it, which also serves script tags.
import './ws4redis.js';

export const WS4Redis = globalThis.WS4Redis;
export const connect = WS4Redis.connect;
export default WS4Redis;
