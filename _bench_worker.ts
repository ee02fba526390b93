/**
 * A bench worker isolate (`bench --threads`): runs one {@linkcode LocalShard}
 * of a run's connections (with `--udp`, one {@linkcode UdpShard} of its
 * sockets) as the main isolate asks (`_bench_threads.ts` has the message
 * protocol). Exports nothing.
 *
 * @module
 */

import { LocalShard, type ShardDelta } from "./_bench_shard.ts";
import { UdpShard } from "./_udp_bench.ts";
import {
  postError,
  type WorkerReply,
  type WorkerRequest,
} from "./_bench_threads.ts";

const scope = self as unknown as {
  postMessage(reply: WorkerReply): void;
  onmessage: ((event: MessageEvent<WorkerRequest>) => void) | null;
};
let shard: LocalShard | UdpShard | undefined;

function answer(id: number, work: () => unknown): void {
  Promise.resolve()
    .then(work)
    .then(
      (value) =>
        scope.postMessage({
          type: "done",
          id,
          value: value as ShardDelta | number[] | undefined,
        }),
      (err) => scope.postMessage({ type: "failed", id, error: postError(err) }),
    );
}

scope.onmessage = (event) => {
  const request = event.data;
  switch (request.type) {
    case "init": {
      const { options } = request;
      const events = {
        onError: (err: Error) =>
          scope.postMessage({ type: "error", error: postError(err) }),
        onAllGone: () => scope.postMessage({ type: "allGone" }),
      };
      shard = "transport" in options
        ? new UdpShard(options, events)
        : new LocalShard(options, events);
      return;
    }
    case "measure":
      return shard!.measure();
    case "probe":
      return answer(request.id, () => shard!.probe());
    case "open":
      return answer(request.id, () => shard!.open());
    case "take":
      return answer(request.id, () => shard!.take());
    case "end":
      return answer(request.id, () => shard!.endWindow());
    case "drain":
      return answer(request.id, () => shard!.drain(request.aborted));
  }
};
