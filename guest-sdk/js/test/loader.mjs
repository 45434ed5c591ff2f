// Node module hooks: resolve `weir:operator/*` (the component's imports)
// to the in-memory host in `host.mjs`. Used as `node --import ./test/register.mjs`.

const HOST = new URL('./host.mjs', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith('weir:operator/')) {
    return { url: HOST, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
