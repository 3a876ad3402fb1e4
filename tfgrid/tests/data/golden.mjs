// Golden vectors for zeroci-tfgrid, made with the published ThreeFold TypeScript SDK and polkadot.
//
// Regenerate (outside the repository; node_modules must never be committed):
//
//   mkdir -p /tmp/tfgrid-vectors && cd /tmp/tfgrid-vectors && npm init -y
//   npm install @threefold/grid_client@2.9.2 @threefold/rmb_direct_client@2.9.2 \
//       @polkadot/keyring@13.5.9 @polkadot/util-crypto@13.5.9 @polkadot/util@13.5.9
//   (13.5.9 is the polkadot version grid_client 2.9.2 itself resolves to)
//   # 1. vectors from the SDK
//   node /work/main/tfgrid/tests/data/golden.mjs > /work/main/tfgrid/tests/data/golden.json
//   # 2. signatures made by our Rust code (sr25519 is randomized, so they are checked by verifying)
//   cd /work/main && cargo run -p zeroci-tfgrid --example emit_rust_signatures
//   # 3. again, so polkadot's verdict on those Rust signatures is recorded
//   cd /tmp/tfgrid-vectors && node /work/main/tfgrid/tests/data/golden.mjs > /work/main/tfgrid/tests/data/golden.json
//
// Run it with the current directory holding that node_modules (or set TFGRID_VECTORS_DIR).
// Versions used for the committed golden.json are recorded in its "generator" field.
//
// Inputs are written in zos's JSON form (as zeroci-tfgrid serializes deployments); this script
// rebuilds the SDK's classes from them and records the SDK's challenge text and hash. Where the
// TS SDK's challenge differs from zos (Go, which is what verifies), "go_challenge" holds what zos
// computes and "ts_challenge" what the SDK computes; the Rust tests check the Go one. Known
// differences (zosbase pkg/gridtypes vs grid_client dist/*/zos):
//  * network-light: TS writes `ip_range || ""` and `wireguard_listen_port || ""`, Go writes an
//    unset IPNet as "<nil>" and the port as "0".
//  * signature_style: TS leaves it out of the challenge; Go appends it (identical while "").
//  * TS hashes IP strings and hex seeds as typed; Go hashes the parsed values (canonical IP text,
//    lowercase hex). Inputs here are already canonical so both agree.

import { createRequire } from "node:module";
import { readFileSync, existsSync } from "node:fs";
import { webcrypto } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.env.TFGRID_VECTORS_DIR || process.cwd();
const require = createRequire(path.join(base, "package.json"));
// The SDK packages' "exports" hide their dist/ internals, so those are loaded by file path.
const requireFile = (rel) => require(path.join(base, "node_modules", rel));

const version = (pkg) => {
  const main = require.resolve(pkg);
  let dir = path.dirname(main);
  while (!existsSync(path.join(dir, "package.json")) || JSON.parse(readFileSync(path.join(dir, "package.json"))).name !== pkg) {
    dir = path.dirname(dir);
  }
  return JSON.parse(readFileSync(path.join(dir, "package.json"))).version;
};

const zos = requireFile("@threefold/grid_client/dist/node/zos");
const { Keyring } = require("@polkadot/keyring");
const { cryptoWaitReady, mnemonicToMiniSecret, signatureVerify, encodeAddress } = require("@polkadot/util-crypto");
const { u8aToHex, hexToU8a } = require("@polkadot/util");
const rmbTypes = requireFile("@threefold/rmb_direct_client/dist/node/types/lib/types");
const ClientEnvelope = requireFile("@threefold/rmb_direct_client/dist/node/envelope").default;
const { sign: rmbSign, createShared } = requireFile("@threefold/rmb_direct_client/dist/node/sign");
const { generatePublicKey } = requireFile("@threefold/rmb_direct_client/dist/node/util");
const base64url = require("base64url").default;
const md5 = require("crypto-js/md5");

await cryptoWaitReady();

const hex = (u8) => Buffer.from(u8).toString("hex");

// ---------------------------------------------------------------- deployments (zos JSON inputs)

const SIG = (twins, weight_required = 1) => ({
  requests: twins.map(([twin_id, required, weight]) => ({ twin_id, required, weight })),
  weight_required,
  signatures: [],
  signature_style: "",
});
const wl = (name, type, data, metadata = "", description = "") => ({
  version: 0, name, type, data, metadata, description,
  result: { created: 0, state: "", message: "", data: null },
});

const deploymentInputs = {
  vm_network_ip: {
    version: 0, twin_id: 4242, contract_id: 0,
    metadata: '{"version":3,"type":"vm","name":"ci_job_17","projectName":"ci/job-17"}',
    description: "zeroci job 17", expiration: 0,
    signature_requirement: SIG([[4242, false, 1]]),
    workloads: [
      wl("cinet", "network", {
        ip_range: "10.20.0.0/16", subnet: "10.20.2.0/24",
        wireguard_private_key: "GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=",
        wireguard_listen_port: 6513, peers: [],
        mycelium: { hex_key: "9751c596c7c951aedad1a5f78f18b59515064adf660e0d55abead65e6fbbd627", peers: [] },
      }),
      wl("pubip", "ip", { v4: true, v6: false }),
      wl("disk", "zmount", { size: 10737418240 }),
      wl("ci_job_17", "zmachine", {
        flist: "https://hub.grid.tf/tf-official-apps/threefoldtech-ubuntu-22.04.flist",
        network: {
          public_ip: "pubip", planetary: true,
          mycelium: { Network: "cinet", hex_seed: "a1b2c3d4e5f6" },
          interfaces: [{ network: "cinet", ip: "10.20.2.2" }],
        },
        size: 2147483648,
        compute_capacity: { cpu: 2, memory: 4294967296 },
        mounts: [{ name: "disk", mountpoint: "/data" }],
        entrypoint: "/sbin/zinit init",
        env: {
          ZEROCI_JOB_ID: "17", SSH_KEY: "ssh-ed25519 AAAAC3Nza test@ci", ZEROCI_CONTROLLER_URL: "https://ci.example:7443",
          A_FIRST: "1", ZEROCI_BOOTSTRAP_TOKEN: "tok-xyz", lower_key: "x", Z_LAST: "z=with=equals",
        },
        corex: true,
      }, "vm-meta", "the vm"),
    ],
  },
  zmount_only: {
    version: 0, twin_id: 7, contract_id: 0, metadata: "", description: "", expiration: 0,
    signature_requirement: SIG([[7, false, 1]]),
    workloads: [wl("data", "zmount", { size: 1073741824 })],
  },
  light: {
    version: 0, twin_id: 31, contract_id: 0,
    metadata: '{"type":"vm","name":"l"}', description: "", expiration: 0,
    signature_requirement: SIG([[31, false, 1]]),
    workloads: [
      wl("lnet", "network-light", {
        subnet: "10.42.3.0/24",
        mycelium: { hex_key: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", peers: [] },
        ip_range: "", wireguard_private_key: "", wireguard_listen_port: 0, peers: [],
      }),
      wl("lvm", "zmachine-light", {
        flist: "https://hub.grid.tf/tf-official-apps/base:latest.flist",
        network: { mycelium: { Network: "lnet", hex_seed: "0102030405ff" }, interfaces: [{ network: "lnet", ip: "10.42.3.2" }] },
        size: 0, compute_capacity: { cpu: 1, memory: 536870912 },
        mounts: [], entrypoint: "", env: { B: "2", A: "1" }, corex: false,
      }),
    ],
  },
  peers_volume_gpu_multisig: {
    version: 1, twin_id: 100, contract_id: 999, metadata: "m", description: "d", expiration: 1700000000,
    signature_requirement: SIG([[100, true, 1], [200, false, 2]], 2),
    workloads: [
      wl("wgnet", "network", {
        ip_range: "10.1.0.0/16", subnet: "10.1.5.0/24", wireguard_private_key: "cHJpdmF0ZQ==",
        wireguard_listen_port: 1024,
        peers: [{
          subnet: "10.1.6.0/24", wireguard_public_key: "cHVibGlj",
          allowed_ips: ["10.1.6.0/24", "100.64.1.6/32"], endpoint: "185.206.122.31:1024",
        }],
      }),
      wl("vol", "volume", { size: 5368709120 }),
      // "ipv4" (deprecated) is refused by the SDK's validators; a Rust unit test covers it.
      wl("gpuvm", "zmachine", {
        flist: "https://hub.grid.tf/x/y.flist",
        network: { public_ip: "", planetary: false, interfaces: [{ network: "wgnet", ip: "10.1.5.2" }] },
        size: 0, compute_capacity: { cpu: 8, memory: 8589934592 },
        mounts: [{ name: "vol", mountpoint: "/vol" }], entrypoint: "/init.sh --flag", env: {}, corex: false,
        gpu: ["0000:28:00.0/1002/731f", "0000:29:00.0/1002/731f"],
      }),
    ],
  },
};

// The SDK classes validate every property on assignment (ValidateMembers), so nested values
// must be class instances when they are set.
function tsData(type, d) {
  const assign = (obj, fields) => {
    for (const [k, v] of Object.entries(fields)) obj[k] = v;
    return obj;
  };
  const without = (obj, ...keys) => Object.fromEntries(Object.entries(obj).filter(([k]) => !keys.includes(k)));
  const peers = (list) => (list || []).map((p) => assign(new zos.Peer(), p));
  switch (type) {
    case "network": {
      const n = assign(new zos.Znet(), without(d, "peers", "mycelium"));
      n.peers = peers(d.peers);
      if (d.mycelium) n.mycelium = assign(new zos.Mycelium(), d.mycelium);
      return n;
    }
    case "network-light": {
      const n = assign(new zos.NetworkLight(), without(d, "peers", "mycelium"));
      n.peers = peers(d.peers);
      n.mycelium = assign(new zos.Mycelium(), d.mycelium);
      return n;
    }
    case "zmachine":
    case "zmachine-light": {
      const light = type === "zmachine-light";
      const net = assign(light ? new zos.ZmachineLightNetwork() : new zos.ZmachineNetwork(), without(d.network, "interfaces", "mycelium"));
      net.interfaces = d.network.interfaces.map((i) => assign(light ? new zos.MachineInterface() : new zos.ZNetworkInterface(), i));
      if (d.network.mycelium) {
        // zos JSON says "Network" (no Go json tag); the TS class says "network".
        net.mycelium = assign(new zos.MyceliumIP(), { network: d.network.mycelium.Network, hex_seed: d.network.mycelium.hex_seed });
      }
      const m = assign(light ? new zos.ZmachineLight() : new zos.Zmachine(), without(d, "network", "compute_capacity", "mounts"));
      m.network = net;
      m.compute_capacity = assign(new zos.ComputeCapacity(), d.compute_capacity);
      m.mounts = d.mounts.map((x) => assign(new zos.Mount(), x));
      return m;
    }
    case "ip":
      return assign(new zos.PublicIP(), d);
    case "zmount":
      return assign(new zos.Zmount(), d);
    case "volume":
      return assign(new zos.Volume(), d);
    default:
      throw new Error(`no TS class for ${type}`);
  }
}

function tsDeployment(input) {
  const d = Object.assign(new zos.Deployment(), input);
  d.workloads = input.workloads.map((w) => Object.assign(new zos.Workload(), { ...w, data: tsData(w.type, w.data) }));
  const sr = new zos.SignatureRequirement();
  sr.requests = input.signature_requirement.requests.map((r) => Object.assign(new zos.SignatureRequest(), r));
  sr.weight_required = input.signature_requirement.weight_required;
  sr.signatures = [];
  d.signature_requirement = sr;
  return d;
}

// What zos computes, expressed through the SDK's classes with the known differences patched
// (see the header): network-light's unset range prints "<nil>" and its port "0".
function goChallenge(input) {
  const d = tsDeployment(input);
  for (const w of d.workloads) {
    if (w.type === "network-light") {
      const n = w.data;
      // zosbase NetworkLight.Challenge: IPNet.String() of an unset range is "<nil>", `%d` of 0 is "0".
      n.challenge = () =>
        (n.ip_range || "<nil>") + n.subnet + (n.wireguard_private_key || "") + String(n.wireguard_listen_port || 0) +
        (n.peers || []).map((p) => p.challenge()).join("") + n.mycelium.challenge();
    }
  }
  return d.challenge() + (input.signature_requirement.signature_style || "");
}

const PHRASE_DEV = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";
const PHRASE_RMB = "volume behind cable present pull exchange wish loyal avocado snap film increase";
const SEED_RMB = "0xb37231837527c7173dc212bb23a7fe795d5dae540e7c21366a5fb9f4cc398a36";

const deployments = {};
for (const [name, input] of Object.entries(deploymentInputs)) {
  const ts = tsDeployment(input);
  const tsText = ts.challenge();
  const goText = goChallenge(input);
  const entry = { input, ts_challenge: tsText, ts_hash: ts.challenge_hash(), go_challenge: goText, go_hash: md5(goText).toString() };
  // Signatures by the SDK's own Deployment.sign (raw 16-byte digest, polkadot keyring).
  if (goText === tsText) {
    const signed = {};
    for (const type of ["sr25519", "ed25519"]) {
      const d = tsDeployment(input);
      await d.sign(input.twin_id, PHRASE_DEV, type);
      signed[type] = d.signature_requirement.signatures[0];
    }
    entry.sdk_signatures = signed;
  }
  deployments[name] = entry;
}

// ---------------------------------------------------------------- identities

const identities = [];
for (const secret of [PHRASE_DEV, PHRASE_RMB, SEED_RMB]) {
  const entry = { secret };
  if (!secret.startsWith("0x")) entry.mini_secret = u8aToHex(mnemonicToMiniSecret(secret));
  for (const type of ["sr25519", "ed25519"]) {
    const pair = new Keyring({ type, ss58Format: 42 }).addFromUri(secret);
    entry[type] = { public_key: u8aToHex(pair.publicKey), ss58: pair.address };
  }
  entry.e2e_public_key = generatePublicKey(secret);
  identities.push(entry);
}

// ---------------------------------------------------------------- signatures made by polkadot

const message = hexToU8a("0x" + deployments.vm_network_ip.go_hash);
const polkadotSignatures = ["sr25519", "ed25519"].map((type) => {
  const pair = new Keyring({ type }).addFromUri(PHRASE_DEV);
  return { key_type: type, secret: PHRASE_DEV, public_key: u8aToHex(pair.publicKey), message: u8aToHex(message), signature: u8aToHex(pair.sign(message)) };
});

// ---------------------------------------------------------------- signatures made by our Rust code

let rustMade = [];
const rustFile = path.join(here, "rust_signatures.json");
if (existsSync(rustFile)) {
  rustMade = JSON.parse(readFileSync(rustFile, "utf8")).map((s) => ({
    ...s,
    polkadot_verified: signatureVerify(hexToU8a(s.message), hexToU8a(s.signature), hexToU8a(s.public_key)).isValid
      && signatureVerify(hexToU8a(s.message), hexToU8a(s.signature), hexToU8a(s.public_key)).crypto === s.key_type,
  }));
}

// ---------------------------------------------------------------- RMB envelope

function envelopeVector(signerType) {
  const env = new rmbTypes.Envelope({
    uid: "6a1f0c1e-3d2b-4a57-9e1f-0c7b5d3e2a10",
    timestamp: 1700000123,
    expiration: 300,
    source: new rmbTypes.Address({ twin: 4242, connection: "tf-1234" }),
    destination: new rmbTypes.Address({ twin: 11 }),
    request: new rmbTypes.Request({ command: "zos.deployment.deploy" }),
    schema: "application/json",
    plain: new Uint8Array(Buffer.from('{"version":0,"twin_id":4242}')),
    relays: ["relay.grid.tf"],
  });
  const client = new ClientEnvelope(undefined, env, "", undefined, new Map());
  const digest = client.challenge();
  const pair = new Keyring({ type: signerType }).addFromUri(PHRASE_DEV);
  client.signature = rmbSign(digest, pair);
  return {
    key_type: signerType,
    secret: PHRASE_DEV,
    challenge_md5: hex(digest),
    signature: hex(client.signature),
    encoded: hex(client.serializeBinary()),
  };
}
const envelopes = ["ed25519", "sr25519"].map(envelopeVector);

// ---------------------------------------------------------------- relay token (JWT)

function relayToken(type, twin, session, now) {
  // Same construction as rmb_direct_client Client.newJWT, with a fixed clock.
  const header = { alg: "RS512", typ: "JWT" };
  const claims = { sub: twin, iat: now, exp: now + 60, sid: session };
  const jwt = base64url(JSON.stringify(header)) + "." + base64url(JSON.stringify(claims));
  const pair = new Keyring({ type }).addFromUri(PHRASE_DEV);
  return { key_type: type, secret: PHRASE_DEV, twin, session, now, ttl: 60, token: jwt + "." + base64url(Buffer.from(rmbSign(jwt, pair))) };
}
const tokens = [relayToken("ed25519", 4242, "tf-1234", 1700000000), relayToken("sr25519", 4242, "tf-1234", 1700000000)];

// ---------------------------------------------------------------- e2e encryption

const pkDev = generatePublicKey(PHRASE_DEV);
const pkRmb = generatePublicKey(PHRASE_RMB);
const sharedA = createShared(hexToU8a(pkRmb), PHRASE_DEV);
const sharedB = createShared(hexToU8a(pkDev), PHRASE_RMB);
if (hex(sharedA) !== hex(sharedB)) throw new Error("shared keys differ");
const nonce = hexToU8a("0x000102030405060708090a0b");
const plaintext = '{"contract_id":1234}';
const key = await webcrypto.subtle.importKey("raw", sharedA, "AES-GCM", false, ["encrypt"]);
const sealed = new Uint8Array(await webcrypto.subtle.encrypt({ name: "AES-GCM", iv: nonce }, key, Buffer.from(plaintext)));
const e2e = {
  sender_secret: PHRASE_DEV, receiver_secret: PHRASE_RMB, shared_key: hex(sharedA),
  nonce: hex(nonce), plaintext, payload: hex(nonce) + hex(sealed),
};

// ---------------------------------------------------------------- output

const out = {
  generator: {
    script: "tfgrid/tests/data/golden.mjs",
    packages: Object.fromEntries(["@threefold/grid_client", "@threefold/rmb_direct_client", "@polkadot/keyring", "@polkadot/util-crypto", "@noble/secp256k1", "crypto-js"].map((p) => {
      try { return [p, version(p)]; } catch { return [p, "unknown"]; }
    })),
    node: process.version,
  },
  deployments, identities, polkadot_signatures: polkadotSignatures, rust_made_signatures: rustMade,
  envelopes, tokens, e2e,
};
process.stdout.write(JSON.stringify(out, null, 2) + "\n");
