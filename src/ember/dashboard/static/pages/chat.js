// Placeholder while the page is written: see app.js for the page contract.
export default {
  id: "chat",
  title: "Chat",
  needsAdmin: false,
  async mount(root, ctx) {
    root.append(ctx.h("h1", {}, "Chat"));
  },
  unmount() {},
};
