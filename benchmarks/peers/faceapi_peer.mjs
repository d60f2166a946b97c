// Peer model: face-api.js's expression net (@vladmandic/face-api, FaceExpressionNet), run in Node on the pure-JS
// CPU backend of @tensorflow/tfjs (no tfjs-node). Called by faceapi_peer.py; see that file and README.md.
//
//   node faceapi_peer.mjs NODE_MODULES HEADER.json PIXELS.u8 OUT.f32 [--batch N] [--backend cpu|wasm]
//
// NODE_MODULES: a node_modules folder holding @tensorflow/tfjs@4 and @vladmandic/face-api (or the folder
//               `npm install` ran in, holding node_modules/).
// HEADER.json:  {"shapes": [[h, w], ...]}: the face crops, in order, each h x w x 3 RGB uint8.
// PIXELS.u8:    the crops' pixels, concatenated, row-major (h, w, 3) each.
// OUT.f32:      float32 N x 7 little-endian: face-api's softmax probabilities in its own order
//               neutral, happy, sad, angry, fearful, disgusted, surprised (FACE_EXPRESSION_LABELS).
//
// Each crop goes in as an int32 tf.Tensor3D, exactly what face-api's own pipeline hands the net in Node
// (extractFaceTensors slices the detection box out of the decoded image tensor). FaceExpressionNet then does
// its own preprocessing (NetInput.toBatchTensor(112, true): zero-pad to a centred square, resizeBilinear to
// 112x112 without align-corners; subtract the mean RGB 122.782, 117.001, 104.298; divide by 255), runs the
// dense-block feature extractor and the 256 -> 7 fully connected layer, and applies the softmax.
//
// face-api's Node builds load a tfjs variant: face-api.node.js wants @tensorflow/tfjs-node (native, cannot be
// installed offline), face-api.node-wasm.js wants @tensorflow/tfjs plus @tensorflow/tfjs-backend-wasm, and
// the ESM bundles fail under Node. We use face-api.node-wasm.js with the installed @tensorflow/tfjs and the
// 'cpu' backend; the wasm backend, which that build only re-exports into its `tf` namespace, is replaced by
// an empty module when it is not installed (a resolve hook for that one module name, nothing else).
//
// --backend wasm (optional, several times faster) needs @tensorflow/tfjs-backend-wasm@4 installed next to
// @tensorflow/tfjs; it is single-threaded here and its float results differ from 'cpu' in the last digits.
import fs from 'node:fs';
import path from 'node:path';
import Module, { createRequire } from 'node:module';

const args = process.argv.slice(2);
let batch = 32;
let backend = 'cpu';
const bi = args.indexOf('--batch');
if (bi >= 0) { batch = parseInt(args[bi + 1], 10); args.splice(bi, 2); }
const ki = args.indexOf('--backend');
if (ki >= 0) { backend = args[ki + 1]; args.splice(ki, 2); }
if (args.length !== 4 || !(batch > 0) || !['cpu', 'wasm'].includes(backend)) {
  console.error('usage: node faceapi_peer.mjs NODE_MODULES HEADER.json PIXELS.u8 OUT.f32 [--batch N] [--backend cpu|wasm]');
  process.exit(2);
}
const [modulesArg, headerFile, pixelsFile, outFile] = args;
let modules = path.resolve(modulesArg);
if (fs.existsSync(path.join(modules, 'node_modules', '@vladmandic', 'face-api'))) modules = path.join(modules, 'node_modules');
const faceapiDir = path.join(modules, '@vladmandic', 'face-api');
if (!fs.existsSync(faceapiDir) || !fs.existsSync(path.join(modules, '@tensorflow', 'tfjs'))) {
  console.error(`faceapi_peer: ${modules} lacks @vladmandic/face-api or @tensorflow/tfjs; `
    + 'run `npm install @tensorflow/tfjs@4 @vladmandic/face-api` in a folder and pass that folder');
  process.exit(3);
}

// Stand in an empty module for @tensorflow/tfjs-backend-wasm if (and only if) it cannot be resolved.
const STUB = path.join(modules, '.faceapi-peer-wasm-stub.js');
const resolve0 = Module._resolveFilename;
Module._resolveFilename = function resolveFilename(request, ...rest) {
  if (request === '@tensorflow/tfjs-backend-wasm') {
    try { return resolve0.call(this, request, ...rest); } catch { return STUB; }
  }
  return resolve0.call(this, request, ...rest);
};
const stub = new Module(STUB);
stub.filename = STUB;
stub.exports = {};
stub.loaded = true;
Module._cache[STUB] = stub;

// tfjs greets Node users with a banner recommending tfjs-node; drop it (and only it) from the log.
for (const level of ['log', 'warn', 'info']) {
  const orig = console[level].bind(console);
  console[level] = (...a) => {
    const text = a.map(String).join(' ');
    if (/tfjs-node|^=+$/.test(text.trim())) return;
    orig(...a);
  };
}

const t0 = Date.now();
const require = createRequire(path.join(modules, 'faceapi-peer.js'));
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;
if (backend === 'wasm') {
  if (typeof tf.setWasmPaths !== 'function') {
    console.error('faceapi_peer: --backend wasm needs @tensorflow/tfjs-backend-wasm@4 installed next to @tensorflow/tfjs');
    process.exit(3);
  }
  const wasmDir = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
  tf.setWasmPaths(path.join(wasmDir, 'dist') + path.sep);
}
if (!(await tf.setBackend(backend))) {
  console.error(`faceapi_peer: could not start the tfjs '${backend}' backend`);
  process.exit(3);
}
await tf.ready();
const net = faceapi.nets.faceExpressionNet;
await net.loadFromDisk(path.join(faceapiDir, 'model'));
const tLoad = Date.now() - t0;

const { shapes } = JSON.parse(fs.readFileSync(headerFile, 'utf8'));
const pixels = fs.readFileSync(pixelsFile);
const total = shapes.reduce((s, [h, w]) => s + h * w * 3, 0);
if (pixels.length !== total) {
  console.error(`faceapi_peer: ${pixelsFile} has ${pixels.length} bytes, the header's shapes need ${total}`);
  process.exit(4);
}
const out = new Float32Array(shapes.length * 7);
let offset = 0;
for (let start = 0; start < shapes.length; start += batch) {
  const chunk = shapes.slice(start, start + batch);
  const tensors = chunk.map(([h, w]) => {
    const n = h * w * 3;
    const t = tf.tensor3d(new Int32Array(pixels.subarray(offset, offset + n)), [h, w, 3], 'int32');
    offset += n;
    return t;
  });
  // an array input is a batch: predictExpressions returns one FaceExpressions per tensor
  const result = await net.predictExpressions(tensors.length === 1 ? [tensors[0]] : tensors);
  const list = Array.isArray(result) ? result : [result];
  list.forEach((e, i) => {
    faceapi.FACE_EXPRESSION_LABELS.forEach((label, j) => { out[(start + i) * 7 + j] = e[label]; });
  });
  tensors.forEach((t) => t.dispose());
}
fs.writeFileSync(outFile, Buffer.from(out.buffer));
const tfjsVersion = JSON.parse(fs.readFileSync(path.join(modules, '@tensorflow', 'tfjs', 'package.json'), 'utf8')).version;
const faVersion = JSON.parse(fs.readFileSync(path.join(faceapiDir, 'package.json'), 'utf8')).version;
console.error(`faceapi_peer: ${shapes.length} faces in ${((Date.now() - t0) / 1000).toFixed(2)}s `
  + `(load ${(tLoad / 1000).toFixed(2)}s; @vladmandic/face-api ${faVersion}, @tensorflow/tfjs ${tfjsVersion}, `
  + `backend ${tf.getBackend()}, labels ${faceapi.FACE_EXPRESSION_LABELS.join(',')})`);
