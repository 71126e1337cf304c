// go navigates to a hash route, showing the screen afresh even when the
// hash is already the current one.
let rerender = () => {};
export const setRerender = (fn) => { rerender = fn; };
export function go(hash) {
  if (location.hash === hash) rerender();
  else location.hash = hash;
}
