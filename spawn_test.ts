import assert from "node:assert/strict";
import { ServerChild } from "./spawn.ts";
import { stubServer } from "./testing_cli.ts";

Deno.test("ServerChild is ready at the listening line and keeps every stderr line", async () => {
  await using tmp = await stubServer();
  const seen: [string, boolean][] = [];
  await using server = new ServerChild(
    ["--port", "0", "--log-format", "json"],
    {
      mainModule: tmp.stub,
      onLine: (line, afterReady) => seen.push([line, afterReady]),
    },
  );
  assert.equal(server.port, 0, "0 before the ready line");
  assert.equal(await server.ready, `127.0.0.1:${server.port}`);
  assert.ok(server.port > 0);
  assert.equal(server.address, `127.0.0.1:${server.port}`);
  assert.match(
    await server.waitFor(/^args: /),
    /^args: server --port 0 --log-format json$/,
  );
  assert.equal(await server.waitFor(/^starting$/), "starting", "a past line");
  assert.deepEqual(server.lines, seen.map(([line]) => line));
  assert.deepEqual(seen.map(([, afterReady]) => afterReady), [
    false,
    false,
    true,
  ]);
  assert.equal(await server.stop(), 0);
  await assert.rejects(
    server.waitFor(/never/),
    /server exited without logging \/never\//,
  );
});

Deno.test("ServerChild runs a program or a wrapper, with env, and keeps the latest lines", async () => {
  await using tmp = await stubServer();
  // A "compiled binary": a program that takes `server ARGS…` itself.
  const program = `${tmp.dir}/tcpecho`;
  await Deno.writeTextFile(
    program,
    `#!/bin/sh\nexec "${Deno.execPath()}" run -A --quiet "${tmp.stub}" "$@"\n`,
  );
  await Deno.chmod(program, 0o755);
  await using server = new ServerChild(["--port", "0", "--env"], {
    program,
    wrapper: ["env", "STUB_ENV=wrapped"],
    env: { NO_COLOR: "1" },
    keepLines: 2,
  });
  await server.ready;
  await server.waitFor(/^env: /);
  assert.deepEqual(server.lines, [
    "args: server --port 0 --env",
    "env: wrapped",
  ]);
  await using other = new ServerChild(["--port", "0", "--env"], {
    mainModule: tmp.stub,
    runFlags: ["-A", "--quiet"],
    env: { STUB_ENV: "given" },
  });
  await other.ready;
  assert.equal(await other.waitFor(/^env: /), "env: given");
});

Deno.test("ServerChild kills a child that stays silent past startTimeoutMs", async () => {
  await using tmp = await stubServer();
  await using server = new ServerChild(["--silent"], {
    mainModule: tmp.stub,
    startTimeoutMs: 200,
  });
  await assert.rejects(server.ready, (err: Error) => {
    assert.equal(err.message, "cannot start server");
    assert.equal(
      (err.cause as Error).message,
      'no "listening on" line after 0.2 s',
    );
    return true;
  });
  const status = await server.child.status; // gone already
  assert.equal(status.signal, "SIGKILL");
});

Deno.test("ServerChild.stop() kills a child still running after stopTimeoutMs", async () => {
  await using tmp = await stubServer();
  await using server = new ServerChild(["--ignore-sigterm"], {
    mainModule: tmp.stub,
    stopTimeoutMs: 200,
  });
  await server.ready;
  await server.waitFor(/^args: /); // its SIGTERM listener is in place
  await assert.rejects(server.exited(100), /still running after 0\.1 s/);
  await server.stop();
  assert.equal((await server.child.status).signal, "SIGKILL");
});
