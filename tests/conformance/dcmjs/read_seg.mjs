// Reads a DICOM SEG with dcmjs, as OHIF does, and prints what it found as JSON:
// {"segments": [{"number", "label", "category", "type"}], "frames": [{"sop", "segment", "pixels"}]}.
// Usage: node read_seg.mjs SEG_FILE
import fs from "node:fs";
import dcmjs from "dcmjs";

const { DicomMessage, DicomMetaDictionary, BitArray } = dcmjs.data;
const asList = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);

const bytes = fs.readFileSync(process.argv[2]);
const message = DicomMessage.readFile(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
const seg = DicomMetaDictionary.naturalizeDataset(message.dict);

const segments = asList(seg.SegmentSequence).map((s) => ({
  number: s.SegmentNumber,
  label: s.SegmentLabel,
  category: asList(s.SegmentedPropertyCategoryCodeSequence)[0]?.CodeValue,
  type: asList(s.SegmentedPropertyTypeCodeSequence)[0]?.CodeValue,
}));

const rows = seg.Rows;
const columns = seg.Columns;
const frameCount = Number(seg.NumberOfFrames);
// Bit-packed binary frames: one bit per pixel, frames back to back (not byte-aligned per frame).
const packed = asList(seg.PixelData)[0];
const bits = BitArray.unpack(new Uint8Array(packed)); // 0 or 255 per pixel
// The segment a frame shows: in its own functional groups, or in the shared ones (one segment).
const shared = asList(seg.SharedFunctionalGroupsSequence)[0] ?? {};
const segmentOf = (group) =>
  asList((group.SegmentIdentificationSequence ? group : shared).SegmentIdentificationSequence)[0]?.ReferencedSegmentNumber;
const frames = asList(seg.PerFrameFunctionalGroupsSequence).map((group, k) => {
  const source = asList(asList(group.DerivationImageSequence)[0]?.SourceImageSequence)[0];
  let pixels = 0;
  for (let i = k * rows * columns; i < (k + 1) * rows * columns; i++) pixels += bits[i] ? 1 : 0;
  return {
    sop: source?.ReferencedSOPInstanceUID,
    segment: segmentOf(group),
    pixels,
  };
});
if (frames.length !== frameCount) throw new Error(`${frames.length} functional groups for ${frameCount} frames`);
process.stdout.write(JSON.stringify({ modality: seg.Modality, segments, frames }) + "\n");
