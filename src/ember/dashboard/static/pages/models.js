// Placeholder while the page is written: see app.js for the page contract.
export default {
  id: "models",
  title: "Models",
  needsAdmin: false,
  async mount(root, ctx) {
    root.append(ctx.h("h1", {}, "Models"));
  },
  unmount() {},
};
