/**
 * Certificate, key and CA files as the CLI reads them: regular files of at
 * most 1 MiB holding the PEM block they are for, and a key that matches its
 * certificate. `_cli.ts` re-exports these.
 *
 * @module
 */
import { quote } from "./io.ts";

/** The most a certificate, key or CA file may hold. */
const PEM_MAX_BYTES = 1 << 20;

/**
 * Reads a PEM file holding a `label` block ("CERTIFICATE", "PRIVATE KEY"),
 * naming what it is for when it cannot. Only a regular file of at most 1 MiB
 * is read: it is checked before it is opened (opening a FIFO blocks, reading
 * `/dev/zero` never ends) and read no further than 1 MiB and a byte. Deno
 * ignores a CA file with no certificate in it, so an unusable file is caught
 * here.
 *
 * @throws {Error} `cannot read WHAT "PATH"`, the reason as its `cause`
 */
export async function readPem(
  path: string,
  what: string,
  label: string,
): Promise<string> {
  try {
    const info = await Deno.stat(path); // follows a link; opens nothing
    if (!info.isFile) {
      throw new Error(info.isDirectory ? "a directory" : "not a regular file");
    }
    using file = await Deno.open(path);
    const buf = new Uint8Array(Math.min(info.size, PEM_MAX_BYTES) + 1);
    let size = 0;
    for (
      let n = await file.read(buf);
      n !== null && (size += n) < buf.length;
      n = await file.read(buf.subarray(size))
    );
    if (size > PEM_MAX_BYTES) throw new Error("larger than 1 MiB");
    if (size === buf.length) throw new Error("it grew while being read");
    const pem = new TextDecoder().decode(buf.subarray(0, size));
    if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(pem)) {
      throw new Error(`no PEM ${label.toLowerCase()} in it`);
    }
    return pem;
  } catch (cause) {
    throw new Error(`cannot read ${what} ${quote(path)}`, { cause });
  }
}

/**
 * Checks that a TLS key belongs to its certificate (the first in the file),
 * naming both files when it does not. A key it cannot parse is left for the
 * listener to refuse.
 *
 * @throws {Error} `--tls-key "K" does not match --tls-cert "C"`
 */
export async function checkKeyPair(
  cert: { file: string; pem: string },
  key: { file: string; pem: string },
): Promise<void> {
  const { createPrivateKey, X509Certificate } = await import("node:crypto");
  let matches = true;
  try {
    matches = new X509Certificate(cert.pem)
      .checkPrivateKey(createPrivateKey(key.pem));
  } catch { /* not parsed here: Deno.listenTls says what is wrong */ }
  if (!matches) {
    throw new Error(
      `--tls-key ${quote(key.file)} does not match --tls-cert ${
        quote(cert.file)
      }`,
    );
  }
}
