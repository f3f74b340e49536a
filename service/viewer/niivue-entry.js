// What the viewer page uses of Niivue; esbuild bundles it, and what it needs, into one ES module.
export { Niivue, SLICE_TYPE, MULTIPLANAR_TYPE, SHOW_RENDER } from "@niivue/niivue";
