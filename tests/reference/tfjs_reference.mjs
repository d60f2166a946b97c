// Runs a TFJS graph model on raw RGB pixels with TensorFlow.js itself (pure-JS CPU backend), writes the
// named output node as float32. Used once to make tests/reference/face_backbones.npz (see make_reference.py):
//   node tfjs_reference.mjs MODEL.json PIXELS.u8 SIZE NODE OUT.f32 [OFFSET SCALE]
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';

const [modelJson, pixelsFile, sizeStr, node, outFile, offStr, scaleStr] = process.argv.slice(2);
const size = parseInt(sizeStr, 10);
const offset = parseFloat(offStr ?? '0');
const scale = parseFloat(scaleStr ?? '1');
const handler = {
  load: async () => {
    const m = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
    const g = m.weightsManifest[0];
    const bufs = m.weightsManifest.flatMap((grp) => grp.paths.map((p) => fs.readFileSync(path.join(path.dirname(modelJson), p))));
    const all = Buffer.concat(bufs);
    return {
      modelTopology: m.modelTopology,
      weightSpecs: m.weightsManifest.flatMap((grp) => grp.weights),
      weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      format: m.format, generatedBy: m.generatedBy, convertedBy: m.convertedBy,
    };
  },
};
await tf.setBackend('cpu');
const model = await tf.loadGraphModel(handler);
const px = new Uint8Array(fs.readFileSync(pixelsFile));
const input = tf.tensor4d(Float32Array.from(px, (v) => (v - offset) * scale), [1, size, size, 3]);
const out = model.execute(input, node);
const data = await out.data();
fs.writeFileSync(outFile, Buffer.from(new Float32Array(data).buffer));
console.log(node, out.shape.join('x'), Array.from(data.slice(0, 4)).map((v) => v.toFixed(5)).join(' '));
