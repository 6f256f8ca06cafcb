namespace Peft.Plugins.Dora; public sealed class Placeholder {}
