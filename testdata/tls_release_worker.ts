/**
 * A worker isolate for `tls_release_test.ts`: runs `serve()` with TLS (the
 * options it is sent), answers `{ port }` once listening, and `{ closed }`
 * once its server has stopped, when told `"close"`.
 *
 * @module
 */
import { serve, type ServeOptions } from "../server.ts";

const scope = self as unknown as Worker;
let server: ReturnType<typeof serve> | undefined;
scope.onmessage = async (event: MessageEvent<ServeOptions | "close">) => {
  if (event.data === "close") {
    await server?.close();
    scope.postMessage({ closed: true });
    return;
  }
  server = serve(event.data);
  scope.postMessage({ port: server.addr.port });
};
