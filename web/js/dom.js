// DOM access shared by the page's modules: `$`, an element by its id.

export const $ = (id) => document.getElementById(id);
