// Placeholder while the page is written: see app.js for the page contract.
export default {
  id: "overview",
  title: "Overview",
  needsAdmin: true,
  async mount(root, ctx) {
    root.append(ctx.h("h1", {}, "Overview"));
  },
  unmount() {},
};
